"""The promotion gate on hand-written eval reports: what passes, what is refused and why, overrides."""

import json

import pytest

from rayft.eval.gate import PromotionRefused, gate_checks, promote
from rayft.registry import Registry, RegistryError


def report(ref="support:1", candidate=0.8, base=0.3, few_shot=0.5, forgetting=(0.6, 0.58), primary="accuracy",
           weights="w1", margin=0.05):
    forgetting_part = {"n": 60, "base": {"answer_rate": forgetting[0]}, "candidate": {"answer_rate": forgetting[1]},
                       "drop": forgetting[0] - forgetting[1]} if forgetting else None
    return {"candidate": ref, "weights_hash": weights, "primary_metric": primary, "path": "/r/report.json",
            "metrics": {"base": {primary: base}, "few_shot": {primary: few_shot}, "candidate": {primary: candidate}},
            "forgetting": forgetting_part, "gate": {"margin": margin, "max_forgetting_drop": 0.1}}


@pytest.fixture
def registry(tmp_path):
    registry = Registry(tmp_path / "r.db")
    for i in (1, 2):
        registry.register("support", "adapter", "/base", f"/a{i}", weights_hash=f"w{i}")
    return registry


def test_a_clear_win_passes_and_is_recorded(registry):
    registry.set_eval_report("support:1", report())
    alias, checks = promote(registry, "support:1", "prod", actor="ana")
    assert [c.name for c in checks] == ["evaluated", "beats the base", "beats the few-shot base", "forgetting"]
    assert all(c.passed for c in checks) and alias.targets == {1: 1.0}
    [change] = registry.history("support", "prod")
    assert (change.actor, change.reason, change.details["passed"], change.details["forced"]) == \
        ("ana", "promotion gate passed", True, False)
    assert change.details["report"] == "/r/report.json" and len(change.details["gate"]) == 4


@pytest.mark.parametrize("changes, failing, says", [
    ({"candidate": 0.31}, ["beats the base", "beats the few-shot base"], "better by +0.01 (needs > 0 and ≥ 0.05)"),
    ({"few_shot": 0.9}, ["beats the few-shot base"], "accuracy 0.8 vs the few-shot base 0.9: not better by -0.1"),
    ({"forgetting": (0.6, 0.3)}, ["forgetting"], "drop +0.300 (allowed ≤ 0.1)"),
    ({"weights": "other"}, ["evaluated"], "but support:1 has weights w1"),
    ({"ref": "support:2"}, ["evaluated"], "report for support:2"),
    ({"candidate": 0.3, "base": 0.3, "few_shot": 0.0, "margin": 0.0}, ["beats the base"], "not better by +0"),
])
def test_the_gate_refuses_and_says_why(registry, changes, failing, says):
    registry.set_eval_report("support:1", report(**changes))
    with pytest.raises(PromotionRefused, match="support:1 not promoted to support:prod") as refused:
        promote(registry, "support:1", "prod")
    assert [c.name for c in refused.value.checks if not c.passed] == failing
    assert says in str(refused.value)
    assert registry.aliases("support") == [] and registry.history("support") == []


def test_lower_is_better_metrics_and_missing_reports(registry):
    registry.set_eval_report("support:1", report(primary="perplexity", candidate=3.0, base=9.0, few_shot=8.0))
    assert all(c.passed for c in gate_checks(registry.get("support:1")))
    registry.set_eval_report("support:1", report(primary="perplexity", candidate=9.5, base=9.0, few_shot=8.0))
    assert not gate_checks(registry.get("support:1"))[1].passed
    [check] = gate_checks(registry.get("support:2"))
    assert not check.passed and "no eval report: run `rayft eval CONFIG --model support:2`" in check.detail
    registry.set_eval_report("support:1", report(forgetting=None))
    assert gate_checks(registry.get("support:1"))[-1].detail.startswith("skipped")
    without_few_shot = report()
    del without_few_shot["metrics"]["few_shot"]
    registry.set_eval_report("support:1", without_few_shot)
    few_shot = gate_checks(registry.get("support:1"))[2]
    assert few_shot.name == "beats the few-shot base" and few_shot.detail == "skipped: the eval ran with eval.few_shot 0"


def test_force_needs_a_reason_and_records_it(registry):
    registry.set_eval_report("support:2", report(ref="support:2", weights="w2", candidate=0.1))
    with pytest.raises(RegistryError, match="--force needs --reason"):
        promote(registry, "support:2", "prod", force=True, reason=" ")
    with pytest.raises(RegistryError, match="promote a version"):
        promote(registry, "support:prod", "prod")
    alias, checks = promote(registry, "support:2", "prod", force=True, reason="hotfix for outage #12")
    assert alias.targets == {2: 1.0} and not all(c.passed for c in checks)
    [change] = registry.history("support", "prod")
    assert change.reason == "hotfix for outage #12" and change.details["forced"] is True


def test_promote_command_prints_why_it_refuses(tmp_path, monkeypatch, capsys):
    from rayft.cli import main

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path))
    registry = Registry()
    registry.register("support", "adapter", "/base", "/a1", weights_hash="w1")
    registry.set_eval_report("support:1", report(candidate=0.2))
    assert main(["promote", "support:1", "--alias", "prod"]) == 1
    captured = capsys.readouterr()
    assert "FAIL" in captured.out and "not promoted to support:prod" in captured.err and "--force" in captured.err
    assert main(["promote", "support:1", "--alias", "prod", "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["promote", "support:1", "--alias", "prod", "--force", "--reason", "demo", "--json"]) == 0
    promoted = json.loads(capsys.readouterr().out)
    assert promoted["promoted"] and promoted["alias"]["ref"] == "support:prod"
    registry.set_eval_report("support:1", report())
    assert main(["promote", "support:1", "--alias", "canary"]) == 0
    assert "promoted support:1 to support:canary" in capsys.readouterr().out


def test_forgetting_perplexity_limit_when_configured(registry):
    ppl = report()
    ppl["forgetting"] |= {"perplexity_increase": 0.85}
    ppl["gate"]["max_forgetting_perplexity_increase"] = 1.0
    registry.set_eval_report("support:1", ppl)
    assert gate_checks(registry.get("support:1"))[-1].detail == "forgetting-set perplexity +85% (allowed ≤ +100%)"
    ppl["forgetting"]["perplexity_increase"] = 4.2
    registry.set_eval_report("support:1", ppl)
    with pytest.raises(PromotionRefused, match=r"perplexity \+420%"):
        promote(registry, "support:1", "prod")
