"""Tools and structured output on the session's Serve app (`serving_app.py`), over real HTTP with the
official `openai` client and a real vLLM engine: `tool_choice` required and named enforced for the
base and adapters in one mixed batch (the calls always parse and name a declared tool), streamed
and not; the tool adapter trained on the function-calling sample calling tools on its own (`auto`);
`response_format` json_schema answers from three adapters and the base all valid; every answer an
OpenAI object by OpenAI's published schema."""

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import jsonschema
import pytest
from conformance import assert_conforms
from serving_app import AUTH, BYPASS

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(900)]


def strict_tool(name: str, argument: str, values: list[str]) -> dict:
    """A tool whose arguments are pinned to its schema (`strict`, as OpenAI has it): even a random
    model's call then ends within a few tokens."""
    parameters = {
        "type": "object",
        "properties": {argument: {"type": "string", "enum": values}},
        "required": [argument],
        "additionalProperties": False,
    }
    return {"type": "function", "function": {"name": name, "parameters": parameters, "strict": True}}


LOOKUP = strict_tool("get_order_status", "order_id", ["12345", "67890"])
ESCALATE = strict_tool("escalate", "reason", ["angry", "legal", "refund"])
TOOLS = [LOOKUP, ESCALATE]
TRIAGE = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["billing", "shipping", "technical", "account"]},
        "priority": {"type": "integer", "enum": [1, 2, 3]},
    },
    "required": ["category", "priority"],
    "additionalProperties": False,
}


def ask(server, model: str, question: str, **fields) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 64, "temperature": 0}
    return httpx.post(server["url"] + "/v1/chat/completions", json=body | fields, headers=AUTH | BYPASS, timeout=120)


def calls_of(answer: dict) -> list[dict]:
    return answer["choices"][0]["message"].get("tool_calls") or []


def valid_call(call: dict) -> bool:
    """The call names a declared tool and its arguments validate against that tool's parameters."""
    spec = {t["function"]["name"]: t["function"]["parameters"] for t in TOOLS}.get(call["function"]["name"])
    if spec is None:
        return False
    try:
        jsonschema.validate(json.loads(call["function"]["arguments"]), spec)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


@pytest.fixture(scope="module")
def served(server, tool_adapter) -> list[str]:
    """The base, two adapters and the tool adapter: all of them answer every test here."""
    return ["tiny", server["support"], "other", tool_adapter.ref]


def test_required_and_named_tool_choice_always_parse_for_the_base_and_adapters_in_one_batch(client, served):
    jobs = [
        (m, choice) for m in served for choice in ("required", {"type": "function", "function": {"name": "escalate"}})
    ]

    def call(job):  # the official client, as users call it
        model, choice = job
        return client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Where is order 12345?"}],
            tools=TOOLS,
            tool_choice=choice,
            parallel_tool_calls=False,
            max_tokens=64,
            temperature=0,
            extra_headers=BYPASS,
        )

    with ThreadPoolExecutor(len(jobs)) as pool:  # in flight together: vLLM batches them
        answers = list(pool.map(call, jobs))
    for (model, choice), completion in zip(jobs, answers):
        answer = completion.model_dump(exclude_unset=True)
        assert_conforms("CreateChatCompletionResponse", answer)
        calls = calls_of(answer)
        assert calls and all(valid_call(c) for c in calls), (model, answer)
        finish = answer["choices"][0]["finish_reason"]
        if choice == "required":
            assert finish == "tool_calls"
        else:  # a named function: that one, and OpenAI's finish_reason for it
            assert [c["function"]["name"] for c in calls] == ["escalate"] and finish == "stop"


def test_streamed_tool_calls_come_as_openai_chunks(client, served):
    for model in (served[0], served[-1]):
        stream = client.chat.completions.create(
            model=model,
            messages=[{"role": "user", "content": "Where is order 67890?"}],
            tools=TOOLS,
            tool_choice="required",
            parallel_tool_calls=False,
            stream=True,
            max_tokens=64,
            temperature=0,
        )
        chunks = list(stream)
        for chunk in chunks:
            assert_conforms("CreateChatCompletionStreamResponse", chunk.model_dump(exclude_unset=True))
        deltas = [c for chunk in chunks for choice in chunk.choices for c in choice.delta.tool_calls or []]
        assert deltas and all(valid_call(d.model_dump()) for d in deltas)
        assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_tool_adapter_calls_tools_on_its_own_and_the_base_does_not(server, tool_adapter):
    from rayft.data.tool_samples import SYSTEM
    from rayft.data.tool_samples import TOOLS as TRAINED_TOOLS

    questions = [
        "Where is my order 48213?",
        "My lawyer will contact you about this contract. (Ana)",
        "Has order 90210 shipped yet?",
    ]

    def auto(model: str, question: str) -> dict:
        messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]
        body = {"model": model, "messages": messages, "tools": TRAINED_TOOLS, "max_tokens": 64, "temperature": 0}
        response = httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=AUTH | BYPASS, timeout=120)
        assert response.status_code == 200, response.text
        assert_conforms("CreateChatCompletionResponse", response.json())
        return response.json()

    def calls_a_tool(answer: dict) -> bool:
        """Its calls, or (a tiny model's arguments may not parse yet) a call it started to write."""
        message = answer["choices"][0]["message"]
        return bool(message.get("tool_calls")) or (message.get("content") or "").startswith("<tool_call>")

    adapter = [auto(tool_adapter.ref, q) for q in questions]
    names = {t["function"]["name"] for t in TRAINED_TOOLS}
    assert all(calls_a_tool(a) for a in adapter), adapter
    assert all(c["function"]["name"] in names for a in adapter for c in calls_of(a))
    assert all(a["choices"][0]["finish_reason"] == "tool_calls" for a in adapter if calls_of(a))
    assert not any(calls_a_tool(auto("tiny", q)) for q in questions)  # a random base writes no call


def test_a_hundred_json_schema_answers_from_three_adapters_and_the_base_all_validate(server, served):
    fmt = {"type": "json_schema", "json_schema": {"name": "triage", "schema": TRIAGE}}
    jobs = [(served[i % len(served)], f"Ticket {i}: my invoice is wrong") for i in range(100)]
    with ThreadPoolExecutor(16) as pool:
        answers = list(pool.map(lambda job: ask(server, job[0], job[1], response_format=fmt), jobs))
    for (model, _), response in zip(jobs, answers):
        assert response.status_code == 200, response.text
        answer = response.json()
        assert answer["choices"][0]["finish_reason"] == "stop", (model, answer)
        jsonschema.validate(json.loads(answer["choices"][0]["message"]["content"]), TRIAGE)
    any_object = ask(
        server, served[1], "Describe the ticket as JSON", response_format={"type": "json_object"}, max_tokens=200
    ).json()
    if any_object["choices"][0]["finish_reason"] == "stop":
        assert isinstance(json.loads(any_object["choices"][0]["message"]["content"]), dict)


def test_bad_tool_and_format_requests_are_400s_naming_the_field(server):
    for fields, param in [
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "refund"}}}, "tool_choice"),
        (
            {"tools": [LOOKUP | {"function": {"name": "x", "parameters": {"type": "objekt"}}}]},
            "tools.0.function.parameters",
        ),
        ({"response_format": {"type": "json_object"}, "tools": TOOLS, "tool_choice": "required"}, "response_format"),
        (
            {"response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": {"$ref": "#/nope"}}}},
            "response_format",
        ),
    ]:
        response = ask(server, "tiny", "hi", **fields)
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"]["param"].startswith(param), response.json()
