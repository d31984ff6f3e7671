"""The Serve app over real HTTP on 127.0.0.1 with a real vLLM engine, called with the `openai` client
(the session's shared app: `serving_app.py`)."""

import asyncio
import json
import shutil
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reference import random_adapter
from serving_app import ADMIN, ADMIN_KEY, AUTH, BYPASS, KEY, QUESTIONS, chat, expected, post_chat
from templates import CONVERSATION, NO_SYSTEM, save_with_template

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(900)]


def test_models_lists_base_adapters_versions_and_aliases_with_their_provenance(client, server):
    from rayft.registry import Registry
    from rayft.storage import content_hash

    registry = Registry()
    registry.set_alias("ab", "listed", 2)
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert {"tiny", server["support"], "support", "other", "other:1", *server["ab"], "ab:listed"} <= set(cards)
    assert server["base"] not in cards  # clients name models, never paths
    assert cards["tiny"]["weights_hash"] == content_hash(server["base"])
    second = registry.get(server["ab"][1])
    for name in (second.ref, "ab:listed"):  # a version, and an alias pointing at it
        assert cards[name]["weights_hash"] == second.weights_hash and cards[name]["gate"] == {"status": "not_evaluated"}
    verdict = [
        {"name": "beats_base", "passed": True, "detail": "", "waived": False},
        {"name": "forgetting", "passed": False, "detail": "", "waived": False},
    ]
    registry.set_eval_report(second.ref, {"weights_hash": second.weights_hash, "verdict": verdict})
    card = next(m.model_dump() for m in client.models.list().data if m.id == second.ref)
    assert card["gate"] == {"status": "failed", "failed": ["forgetting"], "waived": []}
    registry.set_eval_report(second.ref, {"weights_hash": "other weights", "verdict": verdict[:1]})
    card = next(m.model_dump() for m in client.models.list().data if m.id == second.ref)
    assert card["gate"] == {"status": "not_evaluated"}  # a verdict about other weights is no verdict


@pytest.mark.parametrize("model", ["tiny", "support", "other"])
def test_chat_equals_transformers_reference(client, server, reference, model):
    name = server["support"] if model == "support" else model
    for question in QUESTIONS[:2]:
        assert chat(client, name, question).choices[0].message.content == expected(reference, server, name, question)


def test_a_thousand_mixed_requests_at_64_concurrency_all_match_their_model(client, server, reference):
    """Base and two adapters in flight together (vLLM batches them), and one client in ten hanging up
    mid-stream: no 5xx, every completed answer is its own model's (what the same request gets alone),
    and afterwards the engine runs nothing and no adapter is held by a request (all evictable)."""
    models = ["tiny", server["support"], "other"]
    jobs = [(models[i % 3], QUESTIONS[(i // 3) % len(QUESTIONS)], i % 10 == 9) for i in range(1000)]
    answers_for = {(m, q): expected(reference, server, m, q) for m, q, _ in set(jobs)}
    assert len({answers_for[(m, QUESTIONS[0])] for m in models}) == 3  # the three models really differ

    def hang_up(model: str, question: str) -> int:
        body = {
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": 200,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
        with httpx.stream(
            "POST", server["url"] + "/v1/chat/completions", json=body, headers=AUTH | BYPASS, timeout=120
        ) as response:
            next(response.iter_bytes())  # the first chunk, then the connection closes
            return response.status_code

    def ask(job):
        model, question, leaves = job
        if leaves:
            return hang_up(model, question)
        return chat(client, model, question, extra_headers=BYPASS).choices[0].message.content  # 4xx/5xx raise

    with ThreadPoolExecutor(max_workers=64) as pool:
        results = list(pool.map(ask, jobs))
    assert [r for r, (_, _, leaves) in zip(results, jobs) if leaves] == [200] * 100
    assert [r for r, (_, _, leaves) in zip(results, jobs) if not leaves] == [
        answers_for[(m, q)] for m, q, leaves in jobs if not leaves
    ]
    state = {}
    deadline = time.time() + 30
    while time.time() < deadline:
        state = httpx.get(server["url"] + "/admin/adapters", headers=ADMIN, timeout=60).json()
        if not state["running"] and not any(a["in_flight"] for a in state["data"]):
            break
        time.sleep(0.2)
    assert state["running"] == 0 and all(a["in_flight"] == 0 for a in state["data"]), state


def test_streaming_matches_non_streaming_and_reports_usage(client, server):
    full = chat(client, server["support"], QUESTIONS[2])
    chunks = list(chat(client, server["support"], QUESTIONS[2], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens > 0


def test_completions_route_streamed_and_whole(client, server, reference):
    prompt = "Hello, my order"
    text = client.completions.create(model="other", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
    ids = reference.tokenizer.encode(prompt, add_special_tokens=False)
    assert text == reference.continue_ids(ids, server["adapters"]["other"], max_new_tokens=6)
    chunks = list(client.completions.create(model="other", prompt=prompt, max_tokens=6, temperature=0, stream=True))
    assert len(chunks) > 1  # really streamed: one SSE chunk per delta
    assert "".join(c.choices[0].text for c in chunks if c.choices) == text


def test_the_ingress_replica_answers_directly_without_the_proxy(client, server):
    """serve.direct_port: the same app on the replica's own port (Ray Serve's direct ingress)."""
    direct = openai.OpenAI(base_url=server["direct"] + "/v1", api_key=KEY, max_retries=0)
    question = "Is the direct port the same server?"
    answer = chat(direct, "other", question).choices[0].message.content
    assert answer == chat(client, "other", question).choices[0].message.content
    streamed = chat(direct, "other", question, stream=True, extra_headers=BYPASS)
    assert "".join(c.choices[0].delta.content or "" for c in streamed if c.choices) == answer
    body = {"model": "other", "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}
    again = httpx.post(server["direct"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=60)
    assert again.headers["x-rayft-cache"] == "hit" and again.headers["x-rayft-model"] == "other:1"
    assert httpx.post(server["direct"] + "/v1/chat/completions", json=body, timeout=60).status_code == 401


def test_response_names_the_version_served_and_caches_deterministic_answers(server):
    from rayft.registry import Registry
    from rayft.storage import content_hash

    first = post_chat(server, "support", "cache me")
    again = post_chat(server, "support", "cache me")
    bypassed = post_chat(server, "support", "cache me", headers=BYPASS)
    assert first.headers["x-rayft-model"] == server["support"]
    registered = Registry().get(server["support"]).weights_hash
    assert {r.headers["x-rayft-weights-hash"] for r in (first, again, bypassed)} == {registered}
    assert post_chat(server, "tiny").headers["x-rayft-weights-hash"] == content_hash(server["base"])
    assert [r.headers["x-rayft-cache"] for r in (first, again, bypassed)] == ["miss", "hit", "bypass"]
    content = {r.json()["choices"][0]["message"]["content"] for r in (first, again, bypassed)}
    assert len(content) == 1
    sampled = post_chat(server, "support", "cache me", temperature=0.7)
    assert sampled.headers["x-rayft-cache"] == "bypass"  # not deterministic: never cached


def test_a_version_whose_files_changed_is_refused_and_every_other_model_keeps_answering(client, server, tmp_path):
    """A registered version's files replaced in place: its requests (cached answers included) and
    an admin load are refused with a 503 naming the version and both hashes; the other models
    answer as before, and the version is served again once its registered bytes are back.
    (Requests re-check an artifact's files at most once a second; an admin load re-checks at once.)"""
    from rayft.registry import Registry
    from rayft.storage import content_hash

    swap = tmp_path / "swap"
    shutil.copytree(server["adapters"]["other"], swap)
    version = Registry().register("swap", "adapter", server["base"], str(swap))
    assert {version.ref, "swap"} <= {m.id for m in client.models.list().data}  # registered while serving: listed
    question = "Has my refund for the broken kettle been approved?"  # asked nowhere else: nothing cached yet
    before = post_chat(server, version.ref, question, max_tokens=8)
    assert before.headers["x-rayft-cache"] == "miss"
    assert post_chat(server, version.ref, question, max_tokens=8).headers["x-rayft-cache"] == "hit"
    shutil.rmtree(swap)
    shutil.copytree(server["adapters"][server["support"]], swap)  # other weights, same path and ref
    loaded = httpx.post(server["url"] + "/admin/adapters", json={"model": version.ref}, headers=ADMIN, timeout=120)
    altered = content_hash(swap)
    assert loaded.status_code == 503
    for refused in (loaded, post_chat(server, version.ref, question, max_tokens=8)):
        error = refused.json()["error"]
        assert refused.status_code == 503 and error["code"] == "artifact_mismatch" and error["param"] == "model"
        assert (
            version.ref in error["message"] and version.weights_hash in error["message"] and altered in error["message"]
        )
    assert (
        post_chat(server, "other", question).status_code == 200
        and post_chat(server, "tiny", question).status_code == 200
    )
    shutil.rmtree(swap)
    shutil.copytree(server["adapters"]["other"], swap)  # the registered bytes are back
    time.sleep(1.1)
    again = post_chat(server, version.ref, question, max_tokens=8)
    assert again.status_code == 200 and again.json()["choices"] == before.json()["choices"]


def test_an_adapter_is_served_with_the_template_it_was_trained_with(server, reference, tmp_path):
    """An adapter whose artifact carries a chat template without a system role: its prompt is the
    ids training renders with that template (`test_chat_template.py`), not the base template's."""
    from transformers import AutoTokenizer

    from rayft import chat
    from rayft.registry import Registry

    folder = tmp_path / "templated"
    shutil.copytree(server["adapters"]["other"], folder)
    save_with_template(server["base"], folder, NO_SYSTEM)
    ref = Registry().register("templated", "adapter", server["base"], str(folder)).ref
    ids = chat.prompt_ids(AutoTokenizer.from_pretrained(server["base"]), CONVERSATION[:-1], NO_SYSTEM)
    body = {"model": ref, "messages": CONVERSATION[:-1], "max_tokens": 8, "temperature": 0}
    answer = httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=AUTH, timeout=120).json()
    assert answer["usage"]["prompt_tokens"] == len(ids)
    assert answer["choices"][0]["message"]["content"] == reference.continue_ids(ids, server["adapters"]["other"])
    as_base = reference.prompt_ids(CONVERSATION[:-1])
    base = httpx.post(server["url"] + "/v1/chat/completions", json=body | {"model": "tiny"}, headers=AUTH, timeout=120)
    assert base.json()["usage"]["prompt_tokens"] == len(as_base) != len(ids)  # the base keeps its own template


def test_adapter_loaded_and_alias_repointed_without_restart(server, monkeypatch):
    from rayft.cli import main
    from rayft.registry import Registry

    first, second = server["ab"]
    assert main(["adapters", "load", first, "--url", server["url"], "--key", KEY]) == 1  # a user key: 403
    assert main(["adapters", "load", first, "--url", server["url"], "--api-key", ADMIN_KEY]) == 0
    loaded = httpx.get(server["url"] + "/admin/adapters", headers=ADMIN).json()["data"]
    assert first in [a["ref"] for a in loaded]
    registry = Registry()
    registry.set_alias("ab", "live", 1)
    assert post_chat(server, "ab:live").headers["x-rayft-model"] == first
    registry.set_alias("ab", "live", 2)
    assert post_chat(server, "ab:live").headers["x-rayft-model"] == second  # picked up at once
    registry.rollback("ab", "live")
    assert post_chat(server, "ab:live").headers["x-rayft-model"] == first
    monkeypatch.setenv("RAYFT_ADMIN_KEY", ADMIN_KEY)
    assert main(["adapters", "unload", first, "--url", server["url"]]) == 0
    assert first not in [a["ref"] for a in httpx.get(server["url"] + "/admin/adapters", headers=ADMIN).json()["data"]]
    assert post_chat(server, "ab:live").status_code == 200  # loaded again on first use


def test_traffic_split_is_proportional_and_sticky_per_user(server):
    from rayft.registry import Registry

    Registry().set_alias("ab", "canary", {1: 75, 2: 25})
    served = Counter(
        post_chat(server, "ab:canary", user=f"user-{i}", max_tokens=1).headers["x-rayft-model"] for i in range(100)
    )
    first, second = server["ab"]
    assert set(served) == {first, second} and 55 <= served[first] <= 95  # 75 expected, sd ≈ 4.3
    sticky = {post_chat(server, "ab:canary", user="alice", max_tokens=1).headers["x-rayft-model"] for _ in range(8)}
    assert len(sticky) == 1


def test_adapter_from_an_object_storage_uri_is_fetched_and_verified(server, reference, tmp_path):
    """Artifacts behind a URI (pyarrow filesystems: s3://, gs://; file:// here) are fetched, checked
    against the registry's hash, and served; one whose bytes changed after registration is a 503."""
    from rayft.registry import Registry

    registry = Registry()
    copy = shutil.copytree(server["adapters"]["other"], tmp_path / "bucket" / "other")
    ref = registry.register("remote", "adapter", server["base"], f"file://{copy}").ref
    answer = post_chat(server, ref, QUESTIONS[0], max_tokens=8).json()["choices"][0]["message"]["content"]
    assert answer == expected(reference, server, "other", QUESTIONS[0])
    altered = Path(random_adapter(server["base"], tmp_path / "bucket" / "altered", seed=21))  # fetched nowhere yet
    version = registry.register("altered", "adapter", server["base"], f"file://{altered}")
    shutil.copyfile(
        server["adapters"][server["support"]] + "/adapter_model.safetensors", altered / "adapter_model.safetensors"
    )  # changed in the bucket before any node fetched it
    refused = post_chat(server, version.ref, QUESTIONS[0])
    assert refused.status_code == 503 and refused.json()["error"]["code"] == "artifact_mismatch"
    assert version.weights_hash in refused.json()["error"]["message"]
    assert post_chat(server, ref, QUESTIONS[1]).status_code == 200


def test_bad_adapters_are_refused_at_load_with_a_message(server, tmp_path):
    from rayft.registry import Registry

    registry = Registry()
    wide = random_adapter(server["base"], tmp_path / "wide", seed=5, rank=32)
    saving = tmp_path / "saving"
    shutil.copytree(server["adapters"]["other"], saving)
    config = json.loads((saving / "adapter_config.json").read_text()) | {"modules_to_save": ["lm_head"]}
    (saving / "adapter_config.json").write_text(json.dumps(config))
    for name, path, words in (("wide", wide, "max_lora_rank"), ("saving", saving, "modules_to_save")):
        ref = registry.register(name, "adapter", server["base"], str(path)).ref
        response = post_chat(server, ref)
        assert response.status_code == 400 and words in response.json()["error"]["message"]
    assert post_chat(server, "other").status_code == 200  # the engine is unharmed


def test_adapters_in_use_are_never_evicted_a_fifth_waits_for_a_slot_then_is_a_503(server, tmp_path):
    """The engine holds 4 adapters (max_cpu_loras). With requests streaming on all four, a fifth
    adapter waits for a slot (`adapter_wait_s`, 3 s here) instead of evicting one, then is a 503 with
    Retry-After; a fifth that is waiting when those clients hang up takes the slot and is served."""
    from rayft.registry import Registry

    busy = [server["support"], "other:1", *server["ab"]]
    copy = shutil.copytree(server["adapters"]["other"], tmp_path / "fifth")  # a folder holds one version
    fifth = Registry().register("fifth", "adapter", server["base"], str(copy)).ref
    question = {"messages": [{"role": "user", "content": "hi"}], "temperature": 0}

    async def scenario():
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH, timeout=120) as http:

            async def in_flight() -> dict:
                loaded = (await http.get("/admin/adapters", headers=ADMIN)).json()["data"]
                return {a["ref"]: a["in_flight"] for a in loaded}

            async def until(condition, timeout=60) -> bool:
                deadline = time.time() + timeout
                while not condition(await in_flight()) and time.time() < deadline:
                    await asyncio.sleep(0.02)
                return condition(await in_flight())

            async def hold(model):
                body = question | {"model": model, "max_tokens": 480, "ignore_eos": True, "stream": True}
                async with http.stream("POST", "/v1/chat/completions", json=body, headers=BYPASS) as response:
                    async for _ in response.aiter_bytes():
                        pass

            streams = [asyncio.create_task(hold(model)) for model in busy]
            assert await until(lambda counts: all(counts.get(model) for model in busy))
            probe = question | {"model": fifth, "max_tokens": 2}  # its files are other's: bypass the cache
            refused = await http.post("/v1/chat/completions", json=probe, headers=BYPASS)
            assert not any(stream.done() for stream in streams)  # refused while all four still streamed
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
            assert "adapter slots" in refused.json()["error"]["message"]
            assert set(await in_flight()) == set(busy)  # none of them was evicted
            waiting = asyncio.create_task(http.post("/v1/chat/completions", json=probe, headers=BYPASS))
            await asyncio.sleep(1)
            assert not waiting.done()
            for stream in streams:
                stream.cancel()  # the clients hang up: their requests stop counting as in flight
            await asyncio.gather(*streams, return_exceptions=True)
            served = await waiting
            assert served.status_code == 200 and served.headers["x-rayft-model"] == fifth

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "payload, words",
    [
        (b"{not json", "not valid JSON"),
        (json.dumps({"model": "support"}).encode(), "messages"),
        (
            json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi"}], "n": 3}).encode(),
            "n: Input should be less than or equal to 1",
        ),
        (json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi " * 600}]}).encode(), "tokens"),
        (
            json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi " * 230}]}).encode(),
            "the limit is 400 (serve.max_prompt_tokens)",
        ),  # fits the context, not the prompt limit
        (
            json.dumps(
                {"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1100}
            ).encode(),
            "exceeds the context of 1024",
        ),
        (
            json.dumps(
                {"model": "support", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}
            ).encode(),
            "temperature",
        ),
    ],
)
def test_bad_requests_are_400_with_a_message(server, payload, words):
    response = httpx.post(
        server["url"] + "/v1/chat/completions",
        content=payload,
        headers=AUTH | {"content-type": "application/json"},
        timeout=60,
    )
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]


def test_unknown_models_and_paths_are_404_with_an_openai_error(client, server):
    for model in ("no-such-model", server["base"], "../etc/passwd", "support:99"):
        with pytest.raises(openai.NotFoundError) as error:
            chat(client, model, "hi")
        assert error.value.body["type"] == "not_found_error"


def test_requests_without_a_valid_key_are_401_and_admin_routes_want_an_admin_key(server):
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        response = httpx.get(server["url"] + "/v1/models", headers=headers)
        assert response.status_code == 401 and "API key" in response.json()["error"]["message"]
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=server["url"] + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(server["url"] + "/health").status_code == 200
    admin = [
        ("GET", "/admin/adapters", None),
        ("POST", "/admin/adapters", {"model": "other"}),
        ("DELETE", "/admin/adapters/other", None),
    ]
    for method, path, body in admin:
        for headers, status in (({}, 401), ({"Authorization": "Bearer wrong"}, 401), (AUTH, 403)):
            response = httpx.request(method, server["url"] + path, json=body, headers=headers, timeout=60)
            assert response.status_code == status, (method, path, headers)
            assert response.json()["error"]["type"] == ("permission_error" if status == 403 else "authentication_error")
    assert httpx.get(server["url"] + "/admin/adapters", headers=ADMIN).status_code == 200
    assert httpx.get(server["url"] + "/v1/models", headers=ADMIN).status_code == 200  # admins are users too


def test_over_the_concurrency_limit_is_429_with_retry_after(server):
    def slow(_):
        body = {
            "model": "other",
            "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": 150,
            "ignore_eos": True,
            "stream": True,
        }
        with httpx.stream(
            "POST", server["url"] + "/v1/chat/completions", json=body, headers=AUTH | BYPASS, timeout=300
        ) as response:
            response.read()
            return response.status_code, response.headers.get("retry-after")

    def refused() -> float:
        text = httpx.get(server["url"] + "/metrics").text
        samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
        return sum(s.value for s in samples if s.name == "rayft_request_errors_total" and s.labels["code"] == "429")

    before = refused()
    with ThreadPoolExecutor(max_workers=120) as pool:
        results = list(pool.map(slow, range(120)))
    codes = Counter(code for code, _ in results)
    assert set(codes) == {200, 429} and codes[200] >= 80
    assert all(retry == "1" for code, retry in results if code == 429)
    assert refused() - before == codes[429]  # each refusal counted under code 429


def test_metrics_are_per_adapter_and_cover_every_ingress_replica(server):
    """One scrape shows every ingress replica's series: this test publishes a snapshot as a second
    replica would, and reads back the one the real replica published."""
    from rayft.serving.app import APP_NAME
    from rayft.serving.metrics import MetricsBoard, RayKV, ServingMetrics

    post_chat(server, "other", "metrics")
    post_chat(server, "other", "metrics")  # a cache hit
    post_chat(server, "tiny", "metrics")
    assert post_chat(server, "other", "hi " * 230).status_code == 400  # over max_prompt_tokens
    assert post_chat(server, "no-such-model").status_code == 404
    assert post_chat(server, "other", headers={"Authorization": "Bearer wrong"}).status_code == 401
    elsewhere = ServingMetrics(replica="elsewhere")
    elsewhere.model("other:1").requests["chat"].inc(5)
    board = MetricsBoard(APP_NAME, "elsewhere")
    board.publish(elsewhere.snapshot())
    text = httpx.get(server["url"] + "/metrics").text
    board.withdraw()
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(name, **labels):
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    replicas = {s.labels["replica"] for s in samples if s.name == "rayft_requests_total"}  # ingress replicas
    assert len(replicas) == 2 and "elsewhere" in replicas
    assert value("rayft_requests_total", model="other:1", route="chat", replica="elsewhere") == 5
    own = (replicas - {"elsewhere"}).pop()
    assert value("rayft_requests_total", model="other:1", route="chat", replica=own) >= 2
    published = json.loads(RayKV().get(f"{APP_NAME}/{own}"))  # what the other replicas serve of this one
    assert "rayft_requests" in [family[0] for family in published["families"]]
    assert value("rayft_response_cache_total", model="other:1", result="hit") >= 1
    assert value("rayft_time_to_first_token_seconds_count", model="other:1") >= 1
    assert value("rayft_time_per_output_token_seconds_count", model="other:1") >= 1
    assert value("rayft_prompt_tokens_total", model="other:1") > 0
    assert value("rayft_request_errors_total", model="other:1", code="400") >= 1  # refused after routing
    assert value("rayft_completion_tokens_total", model="tiny") > 0
    assert value("rayft_request_errors_total", model="-", code="404") >= 1
    assert value("rayft_request_errors_total", model="-", code="401") >= 1


def test_a_killed_engine_replica_is_replaced_and_later_requests_succeed(server, reference):
    import ray

    replicas = [
        a
        for a in ray.util.list_named_actors(all_namespaces=True)
        if a["name"].startswith("SERVE_REPLICA::rayft#engine")
    ]
    assert len(replicas) == 1
    ray.kill(ray.get_actor(replicas[0]["name"], namespace=replicas[0]["namespace"]), no_restart=True)
    statuses, deadline = [], time.time() + 240
    while time.time() < deadline:
        response = post_chat(server, "other", QUESTIONS[3], headers=BYPASS, max_tokens=8)
        statuses.append(response.status_code)
        if response.status_code == 200:
            break
        time.sleep(1)
    assert statuses[-1] == 200 and set(statuses) <= {200, 503}
    answer = response.json()["choices"][0]["message"]["content"]
    assert answer == expected(reference, server, "other", QUESTIONS[3])  # the adapter was loaded again


def test_sampled_traffic_is_scrubbed_read_back_by_data_prepare_and_its_drift_is_on_metrics(
    server, client, tiny_model, tmp_path
):
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions, prepare_dataset
    from rayft.eval.drift import check_drift
    from rayft.registry import Registry

    version = Registry().get(server["support"])
    asked = [  # [sampled] tells them from the other tests' requests
        "[sampled] Refund the double charge to jane.doe@example.com please",
        "[sampled] Call me on +1 415 555 0134, my order #12345 never arrived",
        "[sampled] My card 4111 1111 1111 1111 was charged twice",
    ]
    for question in asked:
        chat(client, version.ref, question, extra_headers=BYPASS)
    folder = server["traffic"] / version.name / str(version.version)
    deadline = time.monotonic() + 30  # written off the event loop, after the answer
    while time.monotonic() < deadline and sum(p.read_text().count("[sampled]") for p in folder.glob("*.jsonl")) < 3:
        time.sleep(0.2)
    copied = tmp_path / "traffic"
    shutil.copytree(folder, copied)
    written = "".join(p.read_text() for p in copied.glob("*.jsonl"))
    records = [json.loads(line) for line in written.splitlines()]
    ours = [r for r in records if r["messages"][-2]["content"].startswith("[sampled]")]
    assert len(ours) == 3 and all(r["weights_hash"] == version.weights_hash for r in ours)
    for secret in ("jane.doe@example.com", "415 555 0134", "4111 1111 1111 1111"):
        assert secret not in written
    assert all(p in " ".join(r["messages"][-2]["content"] for r in ours) for p in ("<EMAIL>", "<PHONE>", "<CARD>"))

    manifest = prepare_dataset([str(copied)], tmp_path / "dataset", PrepareOptions(DataConfig(), tokenizer=tiny_model))
    counts = manifest.counts
    assert counts.input == len(records) and counts.kept + counts.removed() == len(records) and counts.kept >= 3

    config = server["config"].model_copy(update={"drift": server["config"].drift.model_copy(update={"min_records": 3})})
    (result,) = check_drift(version.ref, config)
    assert result.enough and result.traffic_records == len(records)
    metrics = httpx.get(server["url"] + "/metrics", timeout=30).text
    exported = {
        (s.labels["model"], s.labels["feature"]): s.value
        for family in text_string_to_metric_families(metrics)
        if family.name == "rayft_drift_score"
        for s in family.samples
    }
    assert exported[(version.ref, "max")] == pytest.approx(result.score)
