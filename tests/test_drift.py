"""`rayft drift` without Ray: an alias splits traffic between two versions trained on the same
support tickets; one gets more support tickets (no drift), the other general questions answered
with a label never trained on (drift). The scores are recorded and exported for /metrics, and the
report renders in a real headless Chromium (the screenshot in docs/drift.md)."""

from __future__ import annotations

import json
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from browser import chromium, screenshot
from reference import tiny_artifact

pytestmark = pytest.mark.timeout(300)


@pytest.fixture(scope="module")
def home(tiny_model, tmp_path_factory):
    """Its own RAYFT_HOME: drifty:1 and drifty:2, trained (as registered) on a ticket training split;
    the alias drifty:prod splits traffic between them."""
    from rayft.config import parse_config
    from rayft.data.outputs import SPLIT_SCHEMA
    from rayft.data.samples import support_tickets
    from rayft.registry import Registry

    root = tmp_path_factory.mktemp("drift")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("RAYFT_HOME", str(root / "home"))
        dataset = root / "dataset"
        dataset.mkdir()
        rows = [
            {
                "messages": [m | {"weight": int(m["role"] == "assistant")} for m in r["messages"]],
                "label": r["messages"][-1]["content"].split("\n")[0].split(": ")[1],
                "n_tokens": 0,
                "source": "tickets.jsonl",
                "line": i,
            }
            for i, r in enumerate(support_tickets(400, seed=1, pii_rate=0, dup_rate=0))
        ]
        pq.write_table(pa.Table.from_pylist(rows, schema=SPLIT_SCHEMA), dataset / "train.parquet")
        config = parse_config({"name": "drifty", "model": {"base": tiny_model}, "data": {"out": str(dataset)}})
        registry = Registry()
        versions = []
        for i in (1, 2):
            versions.append(
                registry.register(
                    "drifty", "adapter", tiny_model, tiny_artifact(root / f"adapter{i}", i), config=config.model_dump()
                )
            )
        registry.set_alias("drifty", "prod", {1: 50, 2: 50}, gated=True)
        yield {"root": root, "versions": versions, "registry": registry}


def sample(version, records: list[dict], answer=None, weights_hash=None) -> None:
    """Record `records` as traffic `version` answered (its own answers, or `answer`) with its
    registered weights (or `weights_hash`)."""
    from rayft.config import TrafficConfig
    from rayft.serving.traffic import TrafficSampler

    traffic = TrafficSampler(TrafficConfig(sample_share=1.0))
    for r in records:
        asked, answered = r["messages"][:-1], answer or r["messages"][-1]["content"]
        traffic.record(version.ref, weights_hash or version.weights_hash, asked, answered)


def test_the_alias_version_with_shifted_traffic_drifts_and_the_other_does_not(home, tmp_path, capsys):
    from rayft.cli import main
    from rayft.data.samples import general_chat, support_tickets
    from rayft.eval.review_items import singles_from_traffic
    from rayft.feedback import FeedbackStore, Rating
    from rayft.serving.metrics import drift_exposition

    steady, shifted = home["versions"]
    sample(steady, support_tickets(200, seed=11, pii_rate=0, dup_rate=0))
    sample(shifted, general_chat(200, seed=5), answer="Category: legal\nPlease talk to a lawyer.")
    sample(shifted, support_tickets(5, seed=12), weights_hash="other bytes")  # not what is registered: left out
    # Reviewers rated three of the shifted version's traffic answers: 1, 2 and 5.
    store = FeedbackStore(home["registry"].path)
    singles_from_traffic(home["registry"], store, shifted.ref, home["root"] / "home" / "traffic", limit=3)
    for score in (1, 2, 5):
        item = store.next_item("rev", 1, "drifty", "traffic")
        store.rate(
            Rating(
                item=item.id, reviewer="rev", candidate=shifted.ref, candidate_hash=shifted.weights_hash, score=score
            )
        )
    assert main(["drift", "drifty:prod", "--json"]) == 0
    results = {r["ref"]: r for r in json.loads(capsys.readouterr().out)}

    calm, moved = results[steady.ref], results[shifted.ref]
    assert calm["enough"] and moved["enough"] and moved["traffic_records"] == 200
    assert not calm["drifted"] and all(not f["drifted"] for f in calm["features"])
    assert all(f["psi"] < 0.1 for f in calm["features"])
    drifted = {f["feature"] for f in moved["features"] if f["drifted"]}
    assert moved["drifted"] and {"prompt_tokens", "prompt_token_mix", "predicted_label"} <= drifted
    assert moved["score"] > 1 > 0.2 > calm["score"]
    human = moved["human"]
    assert (human["traffic_rated"], human["traffic_mean_score"], human["traffic_good_share"]) == (3, 8 / 3, 1 / 3)

    scores = {(d["ref"], d["feature"]): d for d in FeedbackStore(home["registry"].path).drift_scores()}
    assert scores[(shifted.ref, "max")]["drifted"] == 1 and scores[(steady.ref, "max")]["drifted"] == 0
    exported = drift_exposition(list(scores.values())).decode()
    assert f'rayft_drift_detected{{feature="max",model="{shifted.ref}"}} 1.0' in exported
    assert f'rayft_drift_score{{feature="max",model="{steady.ref}"}} {calm["score"]!r}' in exported

    folder = home["root"] / "home" / "drift" / "drifty" / "2"
    assert {"drift.json", "drift.md", "drift.html", "predicted_label.png"} <= {p.name for p in folder.iterdir()}
    with chromium() as page:
        page.goto((folder / "drift.html").as_uri())
        assert "DRIFT" in page.locator("h1").inner_text()
        assert page.locator("tr.drift").count() == len(drifted)
        screenshot(page, "drift-report.png", tmp_path)


def test_too_little_traffic_is_reported_as_such_and_exports_nothing(home, capsys):
    from rayft.cli import main
    from rayft.data.samples import support_tickets
    from rayft.eval.drift import check_drift

    registry = home["registry"]
    few = registry.register(
        "drifty", "adapter", home["versions"][0].base_model, str(home["root"] / "adapter1b"),
        weights_hash="few", config=home["versions"][0].config,
    )  # fmt: skip
    sample(few, support_tickets(5, seed=13))
    (result,) = check_drift(few.ref, now=time.time())
    assert not result.enough and result.features == [] and result.score is None
    assert main(["drift", few.ref]) == 0 and "not enough traffic" in capsys.readouterr().out
