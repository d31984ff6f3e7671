"""The Serve app over real HTTP on 127.0.0.1 with a real vLLM engine, called with the `openai` client."""

import json
import socket
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from reference import Reference, random_adapter

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]

QUESTIONS = [
    "I was charged twice for my Pro plan",
    "My package for order #12345 never arrived",
    "The router app crashes when I open the dashboard",
    "Please delete my account",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server(ray_cluster, tiny_model, trained_adapter, tmp_path_factory):
    """rayft serve for the tiny base, with the trained adapter and a second (random) one registered."""
    from rayft.config import parse_config
    from rayft.registry import Registry
    from rayft.serving import app

    second = random_adapter(tiny_model, tmp_path_factory.mktemp("adapters") / "other", seed=1)
    Registry().register("other", "adapter", tiny_model, second)
    config = parse_config({"name": "support", "model": {"base": tiny_model},
                           "serve": {"port": free_port(), "max_loras": 2, "max_model_len": 512}})
    url = app.start(config)
    yield {"url": url, "base": tiny_model, "adapters": {"support": trained_adapter["artifact_uri"], "other": second}}
    app.shutdown()


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def reference(server):
    return Reference(server["base"])


def chat(client, model, question, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0, **extra)


def test_models_lists_base_adapters_and_versions(client, server):
    ids = {m.id for m in client.models.list().data}
    assert {server["base"], "support", "support:1", "other", "other:1"} <= ids


@pytest.mark.parametrize("model", ["base", "support", "other"])
def test_chat_equals_transformers_reference(client, server, reference, model):
    name = server["base"] if model == "base" else model
    adapter = None if model == "base" else server["adapters"][model]
    for question in QUESTIONS[:2]:
        answer = chat(client, name, question).choices[0].message.content
        assert answer == reference.chat([{"role": "user", "content": question}], adapter)


def test_mixed_concurrent_requests_each_match_their_model(client, server, reference):
    """Base and two adapters in flight together (one vLLM batch): every answer is its own model's."""
    jobs = [(model, q) for q in QUESTIONS for model in ("base", "support", "other")] * 2
    names = {"base": server["base"], "support": "support", "other": "other"}
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        answers = list(pool.map(lambda job: chat(client, names[job[0]], job[1]).choices[0].message.content, jobs))
    expected = {(m, q): reference.chat([{"role": "user", "content": q}], None if m == "base" else server["adapters"][m])
                for m, q in set(jobs)}
    assert len({expected[(m, q)] for m, q in jobs if q == QUESTIONS[0]}) == 3  # the models really differ
    assert answers == [expected[job] for job in jobs]


def test_streaming_matches_non_streaming_and_reports_usage(client):
    full = chat(client, "support", QUESTIONS[2])
    chunks = list(chat(client, "support", QUESTIONS[2], stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    assert chunks[-1].usage.prompt_tokens == full.usage.prompt_tokens > 0


def test_completions_route(client, server, reference):
    prompt = "Hello, my order"
    text = client.completions.create(model="other", prompt=prompt, max_tokens=6, temperature=0).choices[0].text
    ids = reference.tokenizer.encode(prompt, add_special_tokens=False)
    assert text == reference.continue_ids(ids, server["adapters"]["other"], max_new_tokens=6)


def test_response_names_the_version_served(server):
    body = {"model": "support", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    response = httpx.post(server["url"] + "/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 200 and response.headers["x-rayft-model"] == "support:1"


def test_unknown_model_is_a_404_with_an_openai_error(client):
    with pytest.raises(openai.NotFoundError) as error:
        chat(client, "no-such-model", "hi")
    assert error.value.body["type"] == "not_found_error" and "no-such-model" in error.value.body["message"]


@pytest.mark.parametrize("payload, words", [
    (b"{not json", "not valid JSON"),
    (json.dumps({"model": "support"}).encode(), "messages"),
    (json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi"}], "n": 3}).encode(), "n > 1"),
    (json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi " * 600}]}).encode(), "tokens"),
    (json.dumps({"model": "support", "messages": [{"role": "user", "content": "hi"}], "temperature": "hot"}).encode(), "temperature"),
])
def test_bad_requests_are_400_with_a_message(server, payload, words):
    response = httpx.post(server["url"] + "/v1/chat/completions", content=payload,
                          headers={"content-type": "application/json"}, timeout=60)
    assert response.status_code == 400
    assert words in response.json()["error"]["message"]
