"""The serving app against a hostile client, over real HTTP to a real Serve app and vLLM engine: every
malformed request is a 4xx naming the field, big bodies are refused before they are read, a client
that hangs up frees its engine slot, no tenant sees another's cache, and the schema tells the truth.
Shares the session's one Serve app with test_serving.py (`serving_app.py`)."""

import asyncio
import json
import socket
import time

import httpx
import pytest
from serving_app import ADMIN, AUTH, post_chat

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(900)]

OK = {"model": "other", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "temperature": 0}


def post_raw(server, payload: bytes, headers=None, path="/v1/chat/completions") -> httpx.Response:
    return httpx.post(
        server["url"] + path,
        content=payload,
        timeout=120,
        headers=AUTH | {"content-type": "application/json"} | (headers or {}),
    )


HOSTILE = [  # (body changes, or raw bytes; the param named; words in the message)
    ({"n": 0}, "n", "greater than or equal to 1"),
    ({"n": -1}, "n", "greater than or equal to 1"),
    ({"n": 2}, "n", "less than or equal to 1"),
    ({"max_tokens": -5}, "max_tokens", "greater than or equal to 1"),
    ({"max_tokens": 0}, "max_tokens", "greater than or equal to 1"),
    ({"max_completion_tokens": 0}, "max_completion_tokens", "greater than or equal to 1"),
    ({"temperature": -1}, "temperature", "greater than or equal to 0"),
    ({"temperature": 2.5}, "temperature", "less than or equal to 2"),
    ({"temperature": "hot"}, "temperature", "valid number"),
    ({"top_p": 2}, "top_p", "less than or equal to 1"),
    ({"top_p": 0}, "top_p", "greater than 0"),
    ({"top_k": -7}, "top_k", "greater than or equal to -1"),
    ({"presence_penalty": 99}, "presence_penalty", "less than or equal to 2"),
    ({"frequency_penalty": -3}, "frequency_penalty", "greater than or equal to -2"),
    ({"repetition_penalty": 0}, "repetition_penalty", "greater than 0"),
    ({"logit_bias": {"99999999": 5}}, "logit_bias", "not in the vocabulary"),
    ({"logit_bias": {"5": 250}}, "logit_bias", "outside -100 to 100"),
    ({"logit_bias": {"abc": 1}}, "logit_bias", "not in the vocabulary"),
    ({"stop": ["a", "b", "c", "d", "e"]}, "stop", "at most 4 stop strings (serve.max_stop)"),
    ({"seed": 2**70}, "seed", "less than or equal to"),
    ({"min_tokens": 9, "max_tokens": 4}, "min_tokens", "above max_tokens 4"),
    ({"model": None}, "model", "valid string"),
    ({"model": ""}, "model", "at least 1 character"),
    ({"messages": []}, "messages", "at least 1 item"),
    ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages.0.role", "'system', 'developer', 'user'"),
    ({"messages": [{"role": "user", "content": ["hi"]}]}, "messages.0.content", "valid string"),
    ({"messages": [{"role": "user"}]}, "messages.0.content", "is required"),
    ({"tools": [{"type": "function"}]}, "tools.0.function", "is required"),
    ({"tool_choice": "auto"}, "tool_choice", "needs tools"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": 5}}}},
        "response_format.json_schema.schema",
        "not a JSON Schema",
    ),
    ({"echo": True}, "echo", "not a field this server accepts"),
    ({"logprobs": True}, "logprobs", "Input should be False"),
    ({"stream_options": {"include_usage": "yes"}}, "stream_options.include_usage", "valid boolean"),
]


@pytest.mark.parametrize("changes, param, words", HOSTILE, ids=[f"{p}-{i}" for i, (_, p, _) in enumerate(HOSTILE)])
def test_every_bad_field_is_a_400_naming_it(server, changes, param, words):
    body = {k: v for k, v in (OK | changes).items()}
    if "messages" in changes and changes.get("messages") is None:
        del body["messages"]
    response = post_raw(server, json.dumps(body).encode())
    error = response.json()["error"]
    assert response.status_code == 400, error
    assert error["param"] == param and words in error["message"] and error["type"] == "invalid_request_error"


def test_a_missing_model_is_a_400(server):
    body = {k: v for k, v in OK.items() if k != "model"}
    response = post_raw(server, json.dumps(body).encode())
    assert response.status_code == 400 and response.json()["error"]["param"] == "model"


@pytest.mark.parametrize(
    "payload, words",
    [
        (b'{"model": "other", "messages": ' + b"[" * 200_000 + b"]" * 200_000 + b"}", "nested deeper than 32"),
        (b'{"model": "other", "max_tokens": ' + b"9" * 5000 + b"}", "Exceeds the limit"),
        (b'{"model": "other", "temperature": NaN}', "NaN is not a JSON number"),
        (b'{"model": "\xff\xfe other"}', "not UTF-8"),
        (b'["model", "other"]', "must be a JSON object"),
        (b'"just a string"', "must be a JSON object"),
        (b"", "not valid JSON"),
    ],
)
def test_bodies_that_are_not_sane_json_objects_are_400(server, payload, words):
    response = post_raw(server, payload)
    assert response.status_code == 400 and words in response.json()["error"]["message"]


def test_a_template_that_refuses_a_role_is_a_400_and_the_engine_is_unharmed(server, tmp_path):
    import shutil

    from templates import REFUSES_SYSTEM, save_with_template

    from rayft.registry import Registry

    folder = shutil.copytree(server["adapters"]["other"], tmp_path / "strict")
    save_with_template(server["base"], folder, REFUSES_SYSTEM)
    ref = Registry().register("strict", "adapter", server["base"], str(folder)).ref
    body = OK | {
        "model": ref,
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}],
    }
    refused = post_raw(server, json.dumps(body).encode())
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "messages"
    assert "System role not supported" in refused.json()["error"]["message"]
    assert post_raw(server, json.dumps(body | {"messages": body["messages"][1:]}).encode()).status_code == 200


def test_a_body_over_the_limit_is_413_before_it_is_read(server):
    """60 MB: refused from its Content-Length; the same streamed without a length: refused once
    the first megabyte is in (serve.max_request_bytes, 1 MiB by default). How long a refusal takes
    is measured in bench/serve_throughput.py --part limits."""
    big = json.dumps(OK | {"messages": [{"role": "user", "content": "x" * 60_000_000}]}).encode()
    declared = post_raw(server, big)
    assert declared.status_code == 413 and "serve.max_request_bytes" in declared.json()["error"]["message"]

    def chunks():
        for i in range(0, len(big), 1 << 16):
            yield big[i : i + (1 << 16)]

    streamed = httpx.post(
        server["url"] + "/v1/chat/completions",
        content=chunks(),
        timeout=120,
        headers=AUTH | {"content-type": "application/json"},
    )
    assert streamed.status_code == 413
    assert post_raw(server, json.dumps(OK).encode()).status_code == 200


def test_uploads_need_a_length_and_fit_the_file_limit_before_they_are_read(server):
    """A multipart upload streamed without Content-Length is a 411; one declaring more than
    serve.fine_tuning.max_file_bytes (256 MiB) is a 413, answered from the header alone."""
    boundary = "rayftboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nfine-tune\r\n'
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="t.jsonl"\r\n\r\n'
    ).encode()
    form = {"content-type": f"multipart/form-data; boundary={boundary}"}
    unmeasured = httpx.post(server["url"] + "/v1/files", content=iter([head, b"{}\r\n"]), headers=AUTH | form)
    assert unmeasured.status_code == 411 and unmeasured.json()["error"]["code"] == "length_required"
    port = int(server["url"].rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:  # the promised body never comes
        raw.sendall(
            (
                f"POST /v1/files HTTP/1.1\r\nHost: x\r\nAuthorization: {AUTH['Authorization']}\r\n"
                f"Content-Type: {form['content-type']}\r\nContent-Length: {300 * 2**20}\r\n\r\n"
            ).encode()
            + head
        )
        answer = b""
        while b"}}" not in answer and (chunk := raw.recv(65536)):  # the error body ends the answer
            answer += chunk
        answer = answer.decode()
    assert answer.startswith("HTTP/1.1 413") and "max_file_bytes" in answer


def test_a_prompt_longer_than_its_token_limit_can_hold_is_refused_without_tokenizing(server):
    huge = OK | {"messages": [{"role": "user", "content": "x" * 900_000}]}  # under the byte limit
    response = post_raw(server, json.dumps(huge).encode())
    assert response.status_code == 400 and "characters" in response.json()["error"]["message"]


def engine_state(server) -> dict:
    return httpx.get(server["url"] + "/admin/adapters", headers=ADMIN, timeout=60).json()


def wait_until(condition, timeout_s: float = 30) -> bool:
    deadline = time.monotonic() + timeout_s
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.05)
    return condition()


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "whole"])
def test_a_client_that_hangs_up_has_its_request_aborted_in_the_engine(server, stream):
    """The client goes away while the engine generates (up to 1000 tokens, sampled, so not cached;
    about 3 s here): vLLM aborts the request (the engine counts it) and its slot is free again. A
    streamed answer is dropped at its first bytes, a whole one once the engine runs it."""
    long = OK | {"max_tokens": 1000, "ignore_eos": True, "temperature": 0.7, "stream": stream}
    before = engine_state(server)["aborted"]

    async def hang_up() -> None:
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=120) as http:
            started = asyncio.Event()

            async def ask():
                async with http.stream("POST", "/v1/chat/completions", json=long) as response:
                    async for _ in response.aiter_bytes():
                        started.set()

            task = asyncio.create_task(ask())
            if stream:
                await asyncio.wait_for(started.wait(), timeout=60)
            else:
                assert await asyncio.to_thread(wait_until, lambda: engine_state(server)["running"] == 1)
            task.cancel()  # the connection closes mid-answer
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(hang_up())
    aborted = wait_until(lambda: engine_state(server)["aborted"] == before + 1)
    state = {k: v for k, v in engine_state(server).items() if k in ("replicas", "running", "aborted")}
    assert aborted, f"the engine did not abort the request once: {before} aborted before, now {state}"
    assert wait_until(lambda: engine_state(server)["running"] == 0)


def test_no_tenant_sees_another_tenants_cache_and_every_answer_has_its_own_id(server):
    body = OK | {"messages": [{"role": "user", "content": "tenants must not share this"}]}
    first = post_chat(server, "other", "tenants must not share this")
    again = post_chat(server, "other", "tenants must not share this")
    other_tenant = httpx.post(
        server["url"] + "/v1/chat/completions", json=body | {"max_tokens": 4}, headers=ADMIN, timeout=120
    )
    assert [r.headers.get("x-rayft-cache") for r in (first, again, other_tenant)] == ["miss", "hit", "miss"]
    answers = [r.json() for r in (first, again, other_tenant)]
    assert len({a["id"] for a in answers}) == 3
    assert len({a["choices"][0]["message"]["content"] for a in answers}) == 1


def test_the_schema_describes_every_request_and_response(server):
    schema = httpx.get(server["url"] + "/openapi.json", timeout=60).json()
    components = schema["components"]["schemas"]
    chat = schema["paths"]["/v1/chat/completions"]["post"]
    assert chat["requestBody"]["content"]["application/json"]["schema"] == {"$ref": "#/components/schemas/ChatRequest"}
    assert chat["responses"]["200"]["content"]["application/json"]["schema"]["$ref"].endswith("ChatCompletionResponse")
    assert chat["responses"]["413"]["content"]["application/json"]["schema"]["$ref"].endswith("ErrorBody")
    temperature = components["ChatRequest"]["properties"]["temperature"]
    number = next(t for t in temperature["anyOf"] if t.get("type") == "number")
    assert (number["minimum"], number["maximum"]) == (0, 2)
    assert components["ChatRequest"]["additionalProperties"] is False
    for name in ("CompletionRequest", "ChatCompletionResponse", "CompletionResponse", "ModelList", "ErrorBody"):
        assert name in components
    create = schema["paths"]["/v1/fine_tuning/jobs"]["post"]["requestBody"]["content"]["application/json"]
    assert create["schema"]["$ref"].endswith("CreateFineTuningJobRequest")
    assert components["CreateFineTuningJobRequest"]["additionalProperties"] is False  # the strict model itself
    limit = next(p for p in schema["paths"]["/v1/files"]["get"]["parameters"] if p["name"] == "limit")
    assert (limit["in"], limit["schema"]["minimum"], limit["schema"]["maximum"]) == ("query", 1, 100)
    upload = schema["paths"]["/v1/files"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert upload["schema"]["$ref"].endswith("FileUpload") and "FileUpload" in components


def test_fuzzing_the_live_schema_finds_no_5xx(server):
    """schemathesis generates requests from the live /openapi.json, valid ones (half of them sent
    to a served model, so the engine takes every sampling field within range) and invalid ones; the
    admin routes get the admin key. No answer may be a 5xx."""
    import hashlib

    import schemathesis
    from hypothesis import HealthCheck, given, settings

    schema = schemathesis.openapi.from_url(server["url"] + "/openapi.json")
    served = ["tiny", "other", server["support"]]
    failures = []

    def send(case) -> None:
        if isinstance(case.body, dict) and "model" in case.body:
            digest = hashlib.sha256(repr(sorted(case.body)).encode()).digest()
            if digest[0] % 2:
                case.body["model"] = served[digest[1] % len(served)]
        headers = ADMIN if case.path.startswith("/admin") else AUTH
        response = case.call(base_url=server["url"], headers=headers, timeout=120)
        if response.status_code >= 500:
            failures.append((case.method, case.path, case.body, response.status_code, response.text[:300]))

    for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
        fuzz = settings(
            max_examples=50, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )(given(case=schema.as_strategy(generation_mode=mode))(send))
        fuzz()
    assert not failures, failures[:5]
    assert engine_state(server)["running"] == 0
