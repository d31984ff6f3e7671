"""The promotion gate on hand-written eval reports: what passes, what is refused and why, overrides."""

import json

import pytest

from rayft.eval.gate import gate_checks
from rayft.eval.promotion import PromotionRefused, promote, stored_report
from rayft.eval.results import EvalReport
from rayft.registry import Registry, RegistryError


def report(
    ref="support:1",
    candidate=0.8,
    base=0.3,
    few_shot=0.5,
    forgetting=(0.6, 0.58),
    primary="accuracy",
    weights="w1",
    margin=0.05,
    n=40,
    **gate,
):
    forgetting_part = (
        {
            "n": 60,
            "base": {"answer_rate": forgetting[0]},
            "candidate": {"answer_rate": forgetting[1]},
            "drop": forgetting[0] - forgetting[1],
        }
        if forgetting
        else None
    )
    return {
        "candidate": ref,
        "weights_hash": weights,
        "primary_metric": primary,
        "path": "/r/report.json",
        "dataset_hash": "d1",
        "n": n,
        "task": "classification",
        "kind": "adapter",
        "base_model": "/base",
        "lower_is_better": primary == "perplexity",
        "metrics": {"base": {primary: base}, "few_shot": {primary: few_shot}, "candidate": {primary: candidate}},
        "forgetting": forgetting_part,
        "gate": {"margin": margin, "max_forgetting_drop": 0.1} | gate,
    }


def checks_of(registry, ref, holders=None):
    version = registry.get(ref)
    return gate_checks(version, stored_report(version), holders)


@pytest.fixture
def registry(tmp_path):
    registry = Registry(tmp_path / "r.db")
    for i in (1, 2):
        registry.register("support", "adapter", "/base", f"/a{i}", weights_hash=f"w{i}")
    return registry


def test_a_clear_win_passes_and_is_recorded(registry):
    registry.set_eval_report("support:1", report())
    alias, checks = promote(registry, "support:1", "prod", actor="ana")
    assert [c.name for c in checks] == [
        "evaluated",
        "test_size",
        "beats_base",
        "beats_few_shot",
        "beats_parent",
        "forgetting",
        "not_worse_than_current",
    ]
    assert all(c.passed for c in checks) and alias.targets == {1: 1.0}
    assert checks[4].detail == "no parent to beat: it has none"
    assert checks[-1].detail == "support:prod points at no version yet"
    [change] = registry.history("support", "prod")
    assert (change.actor, change.reason, change.details["passed"], change.details["forced"]) == (
        "ana",
        "promotion gate passed",
        True,
        False,
    )
    assert change.details["report"] == "/r/report.json" and len(change.details["gate"]) == 7


@pytest.mark.parametrize(
    "changes, failing, says",
    [
        ({"candidate": 0.31}, ["beats_base", "beats_few_shot"], "better by +0.01 (needs > 0 and ≥ 0.05)"),
        ({"few_shot": 0.9}, ["beats_few_shot"], "accuracy 0.8 vs the few-shot base 0.9: not better by -0.1"),
        ({"forgetting": (0.6, 0.3)}, ["forgetting"], "drop +0.300 (allowed ≤ 0.1)"),
        ({"weights": "other"}, ["evaluated"], "but support:1 has weights w1"),
        ({"ref": "support:2"}, ["evaluated"], "report for support:2"),
        ({"candidate": 0.3, "base": 0.3, "few_shot": 0.0, "margin": 0.0}, ["beats_base"], "not better by +0"),
        ({"n": 1}, ["test_size"], "1 test records (needs ≥ 20, eval.gate.min_test_records)"),
        ({"n": 50, "min_test_records": 60}, ["test_size"], "50 test records (needs ≥ 60"),
        (
            {"forgetting": None},
            ["forgetting"],
            "skipped: the eval ran with eval.forgetting off; a skipped check does not "
            "pass unless eval.gate.waive names 'forgetting'",
        ),
    ],
)
def test_the_gate_refuses_and_says_why(registry, changes, failing, says):
    registry.set_eval_report("support:1", report(**changes))
    with pytest.raises(PromotionRefused, match="support:1 not promoted to support:prod") as refused:
        promote(registry, "support:1", "prod")
    assert [c.name for c in refused.value.checks if not c.passed] == failing
    assert says in str(refused.value)
    assert registry.aliases("support") == [] and registry.history("support") == []


def test_lower_is_better_metrics_and_missing_reports(registry):
    registry.set_eval_report("support:1", report(primary="perplexity", candidate=3.0, base=9.0, few_shot=8.0))
    assert all(c.passed for c in checks_of(registry, "support:1"))
    registry.set_eval_report("support:1", report(primary="perplexity", candidate=9.5, base=9.0, few_shot=8.0))
    assert not checks_of(registry, "support:1")[2].passed
    [check] = checks_of(registry, "support:2")
    assert not check.passed and "no eval report: run `rayft eval CONFIG --model support:2`" in check.detail


def test_a_skipped_check_passes_only_when_waived_by_name_and_the_waiver_is_recorded(registry):
    without_few_shot = report(forgetting=None)
    del without_few_shot["metrics"]["few_shot"]
    registry.set_eval_report("support:1", without_few_shot)
    checks = {c.name: c for c in checks_of(registry, "support:1")}
    assert not checks["beats_few_shot"].passed and not checks["forgetting"].passed
    assert checks["beats_few_shot"].detail.startswith("skipped: the eval ran without the few-shot base")
    registry.set_eval_report(
        "support:1", without_few_shot | {"gate": without_few_shot["gate"] | {"waive": ["forgetting"]}}
    )
    with pytest.raises(PromotionRefused, match="few-shot"):
        promote(registry, "support:1", "prod")
    waived = without_few_shot["gate"] | {"waive": ["forgetting", "beats_few_shot"]}
    registry.set_eval_report("support:1", without_few_shot | {"gate": waived})
    _, checks = promote(registry, "support:1", "prod")
    assert [c.name for c in checks if c.waived] == ["beats_few_shot", "forgetting"] and all(c.passed for c in checks)
    assert registry.history("support", "prod")[0].details["waived"] == ["beats_few_shot", "forgetting"]


def test_a_candidate_worse_than_the_current_version_is_refused(registry):
    registry.set_eval_report("support:1", report(candidate=0.9))
    promote(registry, "support:1", "prod")
    # support:2's report measured support:1 beside it on the same rows: 0.8 against 0.9.
    beside = report(ref="support:2", weights="w2", candidate=0.8)
    beside["metrics"]["support:1"] = {"accuracy": 0.9}
    beside["compared"] = {"prod": {"ref": "support:1", "weights_hash": "w1"}}
    registry.set_eval_report("support:2", beside)
    with pytest.raises(
        PromotionRefused,
        match=r"accuracy 0.8 vs support:1 \(support:prod now\) 0.9, measured beside "
        r"the candidate: worse by 0.1 \(allowed ≤ 0\)",
    ):
        promote(registry, "support:2", "prod")
    registry.set_eval_report("support:2", beside | {"gate": beside["gate"] | {"regression_tolerance": 0.15}})
    assert promote(registry, "support:2", "prod")[0].targets == {2: 1.0}  # within the configured tolerance
    # Without the holder measured beside it: the holder's own report counts only on the same split.
    registry.register("support", "adapter", "/base", "/a3", weights_hash="w3")
    registry.set_eval_report("support:3", report(ref="support:3", weights="w3", candidate=0.85))
    registry.set_eval_report("support:2", report(ref="support:2", weights="w2", candidate=0.8))
    checks = checks_of(registry, "support:3", {"support:prod": registry.get("support:prod")})
    assert checks[-1].passed and "from its own eval on the same test split" in checks[-1].detail
    registry.set_eval_report("support:2", report(ref="support:2", weights="w2", candidate=0.8) | {"dataset_hash": "d0"})
    with pytest.raises(
        PromotionRefused,
        match="support:2 \\(support:prod now\\) has no accuracy on this test split: "
        "run `rayft eval CONFIG --model support:3` again",
    ):
        promote(registry, "support:3", "prod")


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
    registry.register("support", "adapter", "/base", "/a2", weights_hash="w2")  # never evaluated
    assert main(["registry", "alias", "support:prod", "2"]) == 2
    assert "'support:prod' is a gated alias" in capsys.readouterr().err
    assert registry.get("support:prod").ref == "support:1"
    assert main(["registry", "alias", "support:prod", "2", "--force"]) == 2
    assert "--force needs --reason" in capsys.readouterr().err
    assert main(["registry", "alias", "support:prod", "2", "--force", "--reason", "rollout by hand"]) == 0
    change = registry.history("support", "prod")[-1]
    assert (change.reason, change.details["forced"]) == ("rollout by hand", True) and change.actor
    assert change.details["gate"]["support:2"][0]["detail"].startswith("support:2 has no eval report")
    registry.set_eval_report("support:1", report())
    assert main(["promote", "support:1", "--alias", "canary"]) == 0
    assert "promoted support:1 to support:canary" in capsys.readouterr().out


def test_forgetting_perplexity_limit_when_configured(registry):
    ppl = report()
    ppl["forgetting"] |= {"perplexity_increase": 0.85}
    ppl["gate"]["max_forgetting_perplexity_increase"] = 1.0
    registry.set_eval_report("support:1", ppl)
    assert checks_of(registry, "support:1")[-1].detail == "forgetting-set perplexity +85% (allowed ≤ +100%)"
    ppl["forgetting"]["perplexity_increase"] = 4.2
    registry.set_eval_report("support:1", ppl)
    with pytest.raises(PromotionRefused, match=r"perplexity \+420%"):
        promote(registry, "support:1", "prod")


def test_a_human_win_rate_over_the_base_counts_when_the_alias_points_at_nothing_yet(registry):
    from rayft.eval.review_report import Pairwise, ReviewSummary

    registry.set_eval_report("support:1", report(min_human_win_rate=0.6, min_human_judgments=10))
    version = registry.get("support:1")

    def human(wins, losses, ties, against="/base"):
        record = Pairwise(other=against, wins=wins, losses=losses, ties=ties, both_bad=0,
                          win_rate=wins / (wins + losses), low=0.0, high=1.0)  # fmt: skip
        return ReviewSummary(ref="support:1", weights_hash="w1", pairwise=[record], scores={}, reviewers={},
                             agreement={}, comments=[])  # fmt: skip

    def check(summary, holders=None):
        checks = gate_checks(version, stored_report(version), holders or {"support:prod": None}, summary)
        return next(c for c in checks if c.name == "human_win_rate")

    assert check(human(7, 3, 0)).passed and "over the base /base" in check(human(7, 3, 0)).detail
    assert not check(human(5, 4, 0)).passed  # 0.556 < 0.6
    assert not check(human(6, 2, 1)).passed and "9 human judgments" in check(human(6, 2, 1)).detail
    assert not check(None).passed
    # Against the version in prod, only judgments against that version count.
    holder = registry.get("support:2")
    assert not check(human(7, 3, 0), {"support:prod": holder}).passed
    assert check(human(7, 3, 0, against="support:2"), {"support:prod": holder}).passed


def continued(registry, parent_score=None, **gate):
    """support-dpo:1, which continues support:1 (support:1's accuracy beside it: `parent_score`), and
    its checks."""
    registry.register("support-dpo", "adapter", "/base", "/d1", weights_hash="d1", parent="support:1")
    measured = report(ref="support-dpo:1", weights="d1", **gate)
    measured["parent"] = {"ref": "support:1", "weights_hash": "w1"}
    if parent_score is not None:
        measured["metrics"]["parent"] = {"accuracy": parent_score}
    registry.set_eval_report("support-dpo:1", measured)
    return {c.name: c for c in checks_of(registry, "support-dpo:1")}


@pytest.mark.parametrize(
    "parent_score, gate, passed, says",
    [
        (
            0.7,
            {},
            True,
            "accuracy 0.8 vs its parent support:1 0.7: better by +0.1 (needs ≥ +0, eval.gate.parent_margin)",
        ),
        (0.8, {}, True, "not better by +0 (needs ≥ +0"),
        (0.85, {}, False, "accuracy 0.8 vs its parent support:1 0.85: not better by -0.05 (needs ≥ +0"),
        (0.85, {"parent_margin": -0.1}, True, "not better by -0.05 (needs ≥ -0.1"),
        (0.75, {"parent_margin": 0.1}, False, "better by +0.05 (needs ≥ +0.1"),
        (None, {}, False, "accuracy was not measured for the candidate and support:1"),
        (0.99, {"parent_margin": None}, True, "not checked: eval.gate.parent_margin is null"),
    ],
)
def test_a_version_that_continues_another_must_beat_it(registry, parent_score, gate, passed, says):
    check = continued(registry, parent_score, **gate)["beats_parent"]
    assert (check.passed, check.waived) == (passed, False) and says in check.detail
    if not passed:
        with pytest.raises(PromotionRefused, match="support-dpo:1 not promoted to support-dpo:prod"):
            promote(registry, "support-dpo:1", "prod")


def test_a_parent_that_is_the_base_is_not_checked_twice(registry):
    """A version trained on a registry base has that base as its parent; the eval does not answer
    it again as the parent (beats_base compares it), and the check says why it passes."""
    registry.register("support", "adapter", "/base", "/a3", weights_hash="w3", parent="chat:1")
    registry.set_eval_report("support:3", report(ref="support:3", weights="w3"))
    check = {c.name: c for c in checks_of(registry, "support:3")}["beats_parent"]
    assert check.passed and check.detail == (
        "no parent to beat: its parent chat:1 is its base (beats_base compares it), or no longer registered"
    )


def quantized_report(candidate=0.79, base=0.8, ppl=(10.0, 10.4), adapter=(0.9, 0.88), **gate) -> dict:
    """A quantized version's report: judged against its source (the eval's base) and with one of the
    source's adapters on both engines."""
    record = report("tiny-w8a8:1", candidate=candidate, base=base, **gate)
    record["metrics"] = {
        "base": {"accuracy": base, "perplexity": ppl[0]},
        "candidate": {"accuracy": candidate, "perplexity": ppl[1]},
    }
    record["quantization"] = {
        "scheme": "w8a8",
        "method": "gptq",
        "source": "tiny:1",
        "weights_mib": {"base": 10.0, "candidate": 3.0},
        "tokens_per_s": {"base": 100.0, "candidate": 120.0},
        "adapters": {"support:3": {"source accuracy": adapter[0], "quantized accuracy": adapter[1]}},
    }
    return record


@pytest.mark.parametrize(
    "changes, failing",
    [
        ({}, []),  # 0.01 worse, perplexity +4%, the adapter 0.02 worse: all within the limits below
        ({"candidate": 0.75}, ["quantization_drop"]),
        ({"max_quantization_drop": 0.005}, ["quantization_drop", "quantization_adapters"]),
        ({"ppl": (10.0, 11.0)}, ["quantization_perplexity"]),
        ({"max_quantization_perplexity_increase": 0.03}, ["quantization_perplexity"]),
        ({"adapter": (0.9, 0.8)}, ["quantization_adapters"]),
    ],
)
def test_a_quantized_version_is_held_to_its_source_not_to_beating_a_base(registry, changes, failing):
    """No beats_base or few-shot check (a smaller copy of the base should match it, not beat it):
    the candidate and each adapter of the source served on it may be at most max_quantization_drop
    worse, and its perplexity at most max_quantization_perplexity_increase higher."""
    limits = {"max_quantization_drop": 0.025, "max_quantization_perplexity_increase": 0.05}
    version = registry.register("tiny-w8a8", "full", "/base", "/q1", weights_hash="w1")
    checks = gate_checks(version, EvalReport.from_record(quantized_report(**(limits | changes))))
    names = [c.name for c in checks]
    assert names == [
        "evaluated",
        "test_size",
        "quantization_drop",
        "quantization_perplexity",
        "quantization_adapters",
        "forgetting",
    ]
    assert [c.name for c in checks if not c.passed] == failing
