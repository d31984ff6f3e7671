"""`rayft quickstart` end to end on the session's Ray: every stage, and the adapter beats the base."""

import json
import socket

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(900)]


def test_quickstart_runs_every_stage_and_the_adapter_beats_the_base(ray_cluster, tmp_path, monkeypatch, capsys):
    """With `--with dpo`: DPO continues the adapter, and preference accuracy rises base → SFT → DPO."""
    from rayft.quickstart import run_quickstart

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = run_quickstart(port=port, extras=("dpo",))

    data = summary["data"]
    removed = data["rejected"] + data["duplicates_exact"] + data["duplicates_near"] + data["leaked"]
    assert data["input"] == data["kept"] + removed and data["rejected"] == 5
    assert data["duplicates_exact"] > 0 and data["duplicates_near"] > 0  # the sample plants both
    for run in ("base_training", "adapter_training"):
        assert summary[run]["final_loss"] < summary[run]["first_loss"]
    assert summary["eval"]["adapter"] >= summary["eval"]["base"] + 0.3
    assert summary["served"]["adapter"].startswith("Category:")
    assert not summary["served"]["base"].startswith("Category:")
    assert json.loads((tmp_path / "quickstart" / "summary.json").read_text()) == summary
    printed = capsys.readouterr().out
    assert "category accuracy" in printed and "served answer: adapter" in printed

    from rayft.registry import Registry

    registry = Registry()
    adapter = registry.get(summary["adapter_training"]["ref"])
    assert adapter.parent == summary["base_training"]["ref"]  # lineage: LoRA on the registered full model
    report = adapter.eval_report
    assert report["metrics"]["candidate"]["accuracy"] == summary["eval"]["adapter"]
    check_dpo_chain(registry, adapter, summary)
    check_gate_and_rollback(registry, adapter, summary["base_training"]["artifact"], tmp_path)


def check_dpo_chain(registry, adapter, summary):
    """The DPO adapter continues the SFT one (its parent, its rank), is preferred to it on held-out
    pairs, passes the gate's parent check, and still answers in the ticket format when served."""
    preference = summary["dpo_eval"]
    assert preference["dpo"] > preference["sft"] > preference["base"]
    dpo = registry.get(summary["dpo_training"]["ref"])
    assert dpo.parent == adapter.ref and dpo.config["train"]["lora"]["r"] == adapter.config["train"]["lora"]["r"]
    checks = {c["name"]: c for c in dpo.eval_report["verdict"]}
    assert checks["beats_parent"]["passed"] and adapter.ref in checks["beats_parent"]["detail"]
    assert summary["served"]["DPO adapter"].startswith("Category:")


def check_gate_and_rollback(registry, adapter, base, tmp_path):
    """The eval report has every part; the gate lets the trained adapter through to `prod`, refuses a
    deliberately bad one (random LoRA weights) and says why; a forced move is recorded and rolled back."""
    from pathlib import Path

    from reference import random_adapter

    from rayft.eval.evaluate import evaluate
    from rayft.eval.promotion import PromotionRefused, promote
    from rayft.quickstart import packaged_config

    report = adapter.eval_report
    assert report["metrics"]["candidate"]["accuracy"] >= report["metrics"]["few_shot"]["accuracy"] + 0.3
    assert report["metrics"]["few_shot"]["mean_shots"] > 0 and report["forgetting"]["n"] == 60
    assert report["metrics"]["candidate"]["perplexity"] < report["metrics"]["base"]["perplexity"]
    folder = Path(report["folder"])
    assert {"report.md", "metrics.png", "confusion.png", "training_loss.png"} <= {p.name for p in folder.iterdir()}
    assert json.loads(Path(report["path"]).read_text())["candidate"] == adapter.ref
    alias, checks = promote(registry, adapter.ref, "prod")
    assert all(c.passed for c in checks) and registry.get("support:prod").ref == adapter.ref

    bad = registry.register("support", "adapter", base, random_adapter(base, tmp_path / "bad-adapter", seed=3))
    config = packaged_config("quickstart.yaml")
    config.eval.limit, config.eval.few_shot = 64, 0
    bad_report = evaluate(config, candidate=bad.ref, show_progress=False)
    # The version in production answered the same 64 rows beside the bad one, on the same engine.
    assert bad_report.compared["prod"].model_dump() == {"ref": adapter.ref, "weights_hash": adapter.weights_hash}
    assert bad_report.metrics[adapter.ref]["accuracy"] >= bad_report.metrics["base"]["accuracy"] + 0.3
    with pytest.raises(PromotionRefused) as refused:
        promote(registry, bad.ref, "prod")
    failed = {c.name for c in refused.value.checks if not c.passed}
    assert {"beats_base", "forgetting_perplexity", "not_worse_than_current"} <= failed, refused.value.checks
    assert "skipped" in next(c.detail for c in refused.value.checks if c.name == "beats_few_shot")  # few_shot 0
    assert registry.get("support:prod").ref == adapter.ref
    promote(registry, bad.ref, "prod", force=True, reason="override drill")
    assert registry.get("support:prod").ref == bad.ref
    assert registry.rollback("support", "prod", reason="bad answers").targets == {adapter.version: 1.0}
    assert [(c.action, c.details and c.details["forced"]) for c in registry.history("support", "prod")] == [
        ("set", False),
        ("set", True),
        ("rollback", None),
    ]
