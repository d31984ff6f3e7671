"""The adapter fleet on the session's shared app (`serving_app.py`: one engine replica holding at most
4 adapters in host memory): adapters registered after the server started are served by name, many
first requests at once load an adapter once, evicted adapters come back with the same greedy answers,
and every tier is seen on `/metrics`, `/admin/adapters` and `rayft adapters list`."""

import asyncio
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from reference import random_adapter
from serving_app import ADMIN, ADMIN_KEY, AUTH, BYPASS, QUESTIONS

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(600)]


def metric(server, name: str, **labels) -> float:
    """The sum of a series over every replica, from one scrape of `/metrics`."""
    text = httpx.get(server["url"] + "/metrics", timeout=30).text
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]
    return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())


def published(server, name: str, at_least: float, **labels) -> float:
    """The series once the engine has published a value of at least `at_least` and then once more
    (it publishes every PUBLISH_S): a later change would show by then."""
    from rayft.serving.metrics import PUBLISH_S

    deadline = time.time() + 30
    while metric(server, name, **labels) < at_least and time.time() < deadline:
        time.sleep(0.2)
    time.sleep(PUBLISH_S + 0.5)
    return metric(server, name, **labels)


def register(server, folder, name: str, seed: int) -> str:
    from rayft.registry import Registry

    path = random_adapter(server["base"], folder / name, seed=seed)
    return Registry().register(name, "adapter", server["base"], str(path)).ref


def ask(server, model: str, question: str) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 8, "temperature": 0}
    return httpx.post(server["url"] + "/v1/chat/completions", json=body, headers=AUTH | BYPASS, timeout=120)


def test_twenty_concurrent_first_requests_for_an_adapter_nobody_listed_load_it_once(server, tmp_path):
    """An adapter registered after the server started (never in `serve.adapters`) is served by name
    on its first request; twenty such requests at once share one load."""
    ref = register(server, tmp_path, "cold", seed=41)
    loads = published(server, "rayft_adapter_loads_total", 0)
    cold = metric(server, "rayft_adapter_first_token_seconds_count", start="cold")
    warm = metric(server, "rayft_adapter_first_token_seconds_count", start="warm")

    async def twenty() -> list[httpx.Response]:
        body = {"model": "cold", "messages": [{"role": "user", "content": QUESTIONS[0]}], "max_tokens": 4}
        async with httpx.AsyncClient(base_url=server["url"], headers=AUTH | BYPASS, timeout=120) as http:
            return await asyncio.gather(*(http.post("/v1/chat/completions", json=body) for _ in range(20)))

    answers = asyncio.run(twenty())
    assert [a.status_code for a in answers] == [200] * 20
    assert {a.headers["x-rayft-model"] for a in answers} == {ref}
    assert published(server, "rayft_adapter_loads_total", loads + 1) == loads + 1
    # the first at least waited for the load; how many others arrived before it ended is up to timing
    cold_now = metric(server, "rayft_adapter_first_token_seconds_count", start="cold")
    warm_now = metric(server, "rayft_adapter_first_token_seconds_count", start="warm")
    assert cold_now >= cold + 1 and cold_now + warm_now == cold + warm + 20


def test_evicted_adapters_come_back_with_the_greedy_answers_of_a_fresh_load(server, reference, tmp_path):
    """Six adapters through four host slots, twice in the same order: each is evicted before its
    second turn and loaded again, and answers exactly as it did when first loaded, and as
    transformers+peft does with its files."""
    refs = [register(server, tmp_path, f"fleet{i}", seed=50 + i) for i in range(6)]
    evictions = published(server, "rayft_adapter_evictions_total", 0, tier="host")
    first = [ask(server, ref, QUESTIONS[1]).json()["choices"][0]["message"]["content"] for ref in refs]
    again = [ask(server, ref, QUESTIONS[1]).json()["choices"][0]["message"]["content"] for ref in refs]
    assert again == first and len(set(first)) > 1  # distinct adapters, distinct answers
    for i in (0, 5):
        path = str(tmp_path / f"fleet{i}")
        assert again[i] == reference.chat([{"role": "user", "content": QUESTIONS[1]}], path)
    assert published(server, "rayft_adapter_evictions_total", evictions + 6, tier="host") >= evictions + 6


def test_every_tier_is_seen_on_metrics_the_admin_route_and_rayft_adapters_list(server, capsys):
    from rayft.cli import main

    assert ask(server, "other", QUESTIONS[2]).status_code == 200
    assert published(server, "rayft_adapters_resident", 1, tier="host") >= 1
    fleet = httpx.get(server["url"] + "/admin/adapters", headers=ADMIN, timeout=30).json()
    rows = {row["ref"]: row for row in fleet["data"]}
    assert rows["other:1"]["tier"] == "host" and rows["other:1"]["in_flight"] == 0
    assert len(fleet["replicas"]) == 1 and rows["other:1"]["replica"] == fleet["replicas"][0]
    assert main(["adapters", "list", "--url", server["url"], "--key", ADMIN_KEY]) == 0
    table = capsys.readouterr().out
    assert "other:1" in table and "host" in table and "engine replica" in table


def test_models_are_listed_in_pages(server):
    def models(**params) -> httpx.Response:
        return httpx.get(server["url"] + "/v1/models", params=params, headers=AUTH, timeout=30)

    everything = [card["id"] for card in models().json()["data"]]
    pages, after = [], None
    while True:
        page = models(limit=2, **({"after": after} if after else {})).json()
        pages.append([card["id"] for card in page["data"]])
        assert (page["first_id"], page["last_id"]) == (pages[-1][0], pages[-1][-1])
        if not page["has_more"]:
            break
        after = page["last_id"]
    assert [i for page in pages for i in page] == everything and all(len(p) <= 2 for p in pages)
    for params, field in (({"limit": 0}, "limit"), ({"after": "no-such-model"}, "after")):
        refused = models(**params)
        assert refused.status_code == 400 and field in refused.json()["error"]["message"]
