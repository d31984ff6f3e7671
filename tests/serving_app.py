"""The session's shared Serve app: `rayft serve` for the tiny base with a trained adapter, a random
one and two versions of an alias target, over real HTTP with a real vLLM engine. test_serving.py and
test_serving_hostile.py (and the conformance checks) all use this one app, started once; it stops
with the session's Ray (`session_ray.py`), before any module that runs its own cluster."""

import socket

import httpx
import openai
import pytest
from reference import Reference, random_adapter
from session_ray import forget, on_stop

KEY = "test-key"
ADMIN_KEY = "test-admin-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}
BYPASS = {"x-rayft-cache": "bypass"}
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


@pytest.fixture(scope="session")
def server(ray_cluster, tiny_model, trained_adapter, tmp_path_factory):
    """rayft serve for the tiny base with the trained adapter, a second (random) one, and two
    versions of an adapter `ab` for alias tests; API and admin keys on, 80 requests in flight per
    replica, prompts of at most 400 tokens (tools rendered) in the tiny model's whole 1024-token
    context, the ingress also answering directly on its own port; the fine-tuning API's routes on;
    every chat answer sampled."""
    from rayft.config import parse_config
    from rayft.registry import Registry
    from rayft.serving import app

    folder = tmp_path_factory.mktemp("adapters")
    paths = {name: random_adapter(tiny_model, folder / name, seed=i) for i, name in enumerate(["other", "b1", "b2"], 1)}
    registry = Registry()
    registry.register("other", "adapter", tiny_model, paths["other"])
    ab = [registry.register("ab", "adapter", tiny_model, paths[n]).ref for n in ("b1", "b2")]
    direct_port = free_port()
    traffic = tmp_path_factory.mktemp("traffic")
    config = parse_config(
        {
            "name": "support",
            "model": {"base": tiny_model},
            "serve": {
                "port": free_port(),
                "direct_port": direct_port,
                "max_loras": 2,
                "max_cpu_loras": 4,
                "adapter_wait_s": 3,  # short: test_serving waits it out
                "max_model_len": 1024,  # room for a long answer to hang up on (test_serving_hostile)
                "api_keys": [KEY],
                "admin_keys": [ADMIN_KEY],
                "max_concurrent_requests": 80,
                "max_prompt_tokens": 400,
                "adapters": [trained_adapter.ref],
                # the fine-tuning routes on (for the schema and the fuzzer); no Jobs API answers there
                "fine_tuning": {"enabled": True, "jobs_address": "http://127.0.0.1:9"},
                "traffic": {"sample_share": 1.0, "path": str(traffic)},  # every chat answer recorded
            },
        }
    )
    url = app.start(config)
    on_stop(app.shutdown)
    yield {
        "url": url,
        "direct": f"http://127.0.0.1:{direct_port}",
        "base": tiny_model,
        "support": trained_adapter.ref,
        "ab": ab,
        "folder": folder,
        "traffic": traffic,
        "config": config,
        "adapters": {trained_adapter.ref: trained_adapter.artifact_uri, "other": paths["other"]},
    }
    if forget(app.shutdown):  # not already stopped with the session's Ray
        app.shutdown()


@pytest.fixture(scope="session")
def client(server):
    return openai.OpenAI(base_url=server["url"] + "/v1", api_key=KEY, max_retries=0)


@pytest.fixture(scope="session")
def reference(server):
    return Reference(server["base"])


def chat(client, model, question, **extra):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": question}], max_tokens=8, temperature=0, **extra
    )


def expected(reference, server, model, question):
    return reference.chat([{"role": "user", "content": question}], server["adapters"].get(model))


def post_chat(server, model, question="hi", headers=None, **extra):
    body = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": 4,
        "temperature": 0,
    } | extra
    return httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=AUTH | (headers or {}), timeout=120)
