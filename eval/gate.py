"""The promotion gate's checks: whether a version's eval report says it is worth serving.

On a version's eval report (`EvalReport`) the gate checks that (1) the report is about these exact
weights, (2) it was measured on at least `min_test_records` test records, the candidate beats (3)
the base and (4) the few-shot base by at least the margin on the primary metric, (5) it beats the
version it continues (its parent, when that is not its base) by at least `parent_margin`, (6) its
answer rate on the forgetting set drops no more than allowed (and, when a limit is set, its
perplexity there rises no more), and (7) it is not worse than the version the alias points at now,
beyond `regression_tolerance`, on the same test split; and, when `min_human_win_rate` is set, (8)
reviewers prefer it over that version (or the base, when the alias points at none yet) at least
that often in at least `min_human_judgments` judgments (`review_report.py`). A quantized version
(`rayft quantize`) is judged against its source instead of (3)-(5): `quantization_checks`.

A check the eval could not run (no few-shot base, no forgetting set, perplexity off) is *skipped*,
and a skipped check fails unless the eval config waives it by name (`eval.gate.waive`); waived
checks are shown and recorded as such. The settings come from the report (the config the eval ran
with). Moving an alias through these checks is `promotion.py`.
"""

from __future__ import annotations

from rayft.config import GateConfig
from rayft.eval.results import Check, EvalReport
from rayft.eval.review_report import ReviewSummary
from rayft.registry import ModelVersion

BASELINES = {"base": "the base", "few_shot": "the few-shot base"}


def skipped(name: str, why: str, gate: GateConfig) -> Check:
    """A check the eval did not run: a pass only when the eval config waives it by name."""
    if name in gate.waive:
        return Check(name=name, passed=True, detail=f"waived (eval.gate.waive): {why}", waived=True)
    return Check(
        name=name,
        passed=False,
        detail=f"skipped: {why}; a skipped check does not pass unless eval.gate.waive names {name!r}",
    )


def gain(report: EvalReport, candidate: float, other: float) -> float:
    """How much better `candidate` is than `other` on the primary metric (negative: worse)."""
    return other - candidate if report.lower_is_better else candidate - other


def beats(report: EvalReport, baseline: str) -> Check:
    """The candidate is better than `baseline` on the primary metric by at least the margin."""
    primary, name, margin = report.primary_metric, f"beats_{baseline}", report.gate.margin
    if baseline not in report.metrics:
        return skipped(name, f"the eval ran without {BASELINES[baseline]} (eval.few_shot 0)", report.gate)
    candidate, other = report.primary("candidate"), report.primary(baseline)
    if candidate is None or other is None:
        return Check(
            name=name, passed=False, detail=f"{primary} was not measured for the candidate and {BASELINES[baseline]}"
        )
    better = gain(report, candidate, other)
    return Check(
        name=name,
        passed=better >= margin and better > 0,
        detail=f"{primary} {candidate:.4g} vs {BASELINES[baseline]} {other:.4g}: "
        f"{'better' if better > 0 else 'not better'} by {better:+.4g} (needs > 0 and ≥ {margin:g})",
    )


def beats_parent(report: EvalReport, version: ModelVersion) -> Check:
    """The candidate is better than the version it continues (measured beside it in the eval) by at
    least `parent_margin` (negative: may be that much worse); a pass when it continues none other
    than its base, or when the margin is null."""
    name, margin, primary = "beats_parent", report.gate.parent_margin, report.primary_metric
    if margin is None:
        return Check(name=name, passed=True, detail="not checked: eval.gate.parent_margin is null")
    if report.parent is None:
        whom = f"its parent {version.parent} is its base (beats_base compares it), or no longer registered"
        return Check(name=name, passed=True, detail=f"no parent to beat: {whom if version.parent else 'it has none'}")
    candidate, other = report.primary("candidate"), report.primary("parent")
    if candidate is None or other is None:
        return Check(
            name=name, passed=False, detail=f"{primary} was not measured for the candidate and {report.parent.ref}"
        )
    better = gain(report, candidate, other)
    return Check(
        name=name,
        passed=better >= margin,
        detail=f"{primary} {candidate:.4g} vs its parent {report.parent.ref} {other:.4g}: "
        f"{'better' if better > 0 else 'not better'} by {better:+.4g} (needs ≥ {margin:+g}, eval.gate.parent_margin)",
    )


def forgetting_checks(report: EvalReport) -> list[Check]:
    """The answer-rate drop on the forgetting set, and its perplexity rise when a limit is set."""
    forgetting, gate = report.forgetting, report.gate
    if not forgetting:
        return [skipped("forgetting", "the eval ran with eval.forgetting off", gate)]
    drop, limit = forgetting.drop, gate.max_forgetting_drop
    checks = [
        Check(
            name="forgetting",
            passed=drop <= limit,
            detail=f"forgetting-set answer rate {forgetting.base['answer_rate']:.3f} → "
            f"{forgetting.candidate['answer_rate']:.3f}: drop {drop:+.3f} (allowed ≤ {limit:g})",
        )
    ]
    rise, limit = forgetting.perplexity_increase, gate.max_forgetting_perplexity_increase
    if limit is not None and rise is None:
        checks.append(
            skipped("forgetting_perplexity", "forgetting-set perplexity was not measured (eval.perplexity off)", gate)
        )
    elif limit is not None:
        checks.append(
            Check(
                name="forgetting_perplexity",
                passed=rise <= limit,
                detail=f"forgetting-set perplexity {rise:+.0%} (allowed ≤ {limit:+.0%})",
            )
        )
    return checks


def worse_by(report: EvalReport, value: float | None, other: float | None) -> float | None:
    """How much worse `value` is than `other` on the primary metric (negative: better)."""
    return None if value is None or other is None else -gain(report, value, other)


def quantization_checks(report: EvalReport) -> list[Check]:
    """A quantized candidate against its source (the eval's base): at most `max_quantization_drop`
    worse on the primary metric, perplexity at most `max_quantization_perplexity_increase` higher,
    and each of the source's adapters that answered on both at most the same drop worse on it."""
    quantization, gate, primary = report.quantization, report.gate, report.primary_metric
    drop, limit = worse_by(report, report.primary("candidate"), report.primary("base")), gate.max_quantization_drop
    checks = [
        Check(
            name="quantization_drop",
            passed=drop is not None and drop <= limit,
            detail=f"{primary} {_n(report.primary('candidate'))} vs its source {quantization.source} "
            f"{_n(report.primary('base'))}: worse by {_n(drop)} (allowed ≤ {limit:g}, eval.gate.max_quantization_drop)",
        )
    ]
    ppl = {v: report.metrics.get(v, {}).get("perplexity") for v in ("base", "candidate")}
    if ppl["base"] and ppl["candidate"]:
        rise, limit = ppl["candidate"] / ppl["base"] - 1, gate.max_quantization_perplexity_increase
        checks.append(
            Check(
                name="quantization_perplexity",
                passed=rise <= limit,
                detail=f"test perplexity {ppl['base']:.4g} → {ppl['candidate']:.4g}: {rise:+.2%} "
                f"(allowed ≤ {limit:+.0%}, eval.gate.max_quantization_perplexity_increase)",
            )
        )
    else:
        checks.append(
            Check(name="quantization_perplexity", passed=False, detail="not measured: eval.perplexity is off")
        )
    worse = {
        ref: worse_by(report, sides.get(f"quantized {primary}"), sides.get(f"source {primary}"))
        for ref, sides in quantization.adapters.items()
    }
    failing = [ref for ref, d in worse.items() if d is None or d > gate.max_quantization_drop]
    checks.append(
        Check(
            name="quantization_adapters",
            passed=not failing,
            detail="; ".join(f"{ref} worse by {_n(d)} on it" for ref, d in worse.items())
            + f" (allowed ≤ {gate.max_quantization_drop:g})"
            if worse
            else f"no adapter of {quantization.source} is registered",
        )
    )
    return checks


def _n(value: float | None) -> str:
    return "-" if value is None else f"{value:.4g}"


def current_metric(report: EvalReport, holder: ModelVersion) -> tuple[float | None, str]:
    """The primary metric of `holder` on the candidate's test split, and where it comes from: measured
    beside the candidate in this eval, or the holder's own eval on the same dataset and test size."""
    beside = [c for c in report.compared.values() if c.ref == holder.ref and c.weights_hash == holder.weights_hash]
    if beside and holder.ref in report.metrics:
        return report.primary(holder.ref), "measured beside the candidate"
    own = EvalReport.from_record(holder.eval_report) if holder.eval_report else None
    if (
        own
        and own.candidate == holder.ref
        and own.weights_hash == holder.weights_hash
        and (own.dataset_hash, own.n, own.task, own.primary_metric)
        == (report.dataset_hash, report.n, report.task, report.primary_metric)
    ):
        return own.primary("candidate"), "from its own eval on the same test split"
    return None, ""


def not_worse_than_current(report: EvalReport, alias: str, holder: ModelVersion | None) -> Check:
    """The candidate is not worse than the version `alias` points at now, beyond the tolerance."""
    name, tolerance = "not_worse_than_current", report.gate.regression_tolerance
    if holder is None:
        return Check(name=name, passed=True, detail=f"{alias} points at no version yet")
    if holder.ref == report.candidate:
        return Check(name=name, passed=True, detail=f"{alias} already points at {holder.ref}")
    primary = report.primary_metric
    other, source = current_metric(report, holder)
    candidate = report.primary("candidate")
    if other is None or candidate is None:
        return Check(
            name=name,
            passed=False,
            detail=f"{holder.ref} ({alias} now) has no {primary} on this test split: run `rayft eval "
            f"CONFIG --model {report.candidate}` again, which evaluates the current version beside "
            "the candidate",
        )
    better = gain(report, candidate, other)
    return Check(
        name=name,
        passed=-better <= tolerance,
        detail=f"{primary} {candidate:.4g} vs {holder.ref} ({alias} now) {other:.4g}, {source}: "
        f"{'worse' if better < 0 else 'not worse'} by {max(-better, 0):.4g} (allowed ≤ {tolerance:g})",
    )


def human_win_rate(report: EvalReport, alias: str, holder: ModelVersion | None, human: ReviewSummary | None) -> Check:
    """Reviewers preferred the candidate over the alias's current version (the base when there is
    none) often enough, in enough judgments (ties count as judgments, not as wins)."""
    gate, name = report.gate, "human_win_rate"
    current = holder is not None and holder.ref != report.candidate
    other = holder.ref if current else report.base_model
    whom = f"{other} ({alias} now)" if current else f"the base {other}"
    record = human.against(other) if human else None
    judged = record.judgments if record else 0
    if judged < gate.min_human_judgments:
        return Check(
            name=name,
            passed=False,
            detail=f"{judged} human judgments against {whom} (needs ≥ {gate.min_human_judgments}, "
            f"eval.gate.min_human_judgments): `rayft review prepare {report.candidate}`, then review",
        )
    rate = record.win_rate or 0.0
    return Check(
        name=name,
        passed=rate >= gate.min_human_win_rate,
        detail=f"reviewers preferred it over {whom} in {record.wins} of {record.wins + record.losses} "
        f"decided judgments ({record.ties} ties): win rate {rate:.3f} (95% {record.low or 0:.3f}–"
        f"{record.high or 0:.3f}; needs ≥ {gate.min_human_win_rate:g})",
    )


def gate_checks(
    version: ModelVersion,
    report: EvalReport | None,
    holders: dict[str, ModelVersion | None] | None = None,
    human: ReviewSummary | None = None,
) -> list[Check]:
    """Every check of the gate on `version`'s eval `report` (none fails the gate), the comparison
    with each of `holders` ({NAME:ALIAS: the version it points at now, or None}), and what reviewers
    said (`human`) when the gate asks for a human win rate."""
    if report is None:
        return [
            Check(
                name="evaluated",
                passed=False,
                detail=f"{version.ref} has no eval report: run `rayft eval CONFIG --model {version.ref}`",
            )
        ]
    same = report.candidate == version.ref and report.weights_hash == version.weights_hash
    checks = [
        Check(
            name="evaluated",
            passed=same,
            detail=f"report for {report.candidate} with weights {str(report.weights_hash)[:12]}"
            + ("" if same else f", but {version.ref} has weights {str(version.weights_hash)[:12]}"),
        )
    ]
    checks.append(
        Check(
            name="test_size",
            passed=report.n >= report.gate.min_test_records,
            detail=f"{report.n} test records (needs ≥ {report.gate.min_test_records}, eval.gate.min_test_records)",
        )
    )
    if report.quantization:  # judged against its source, which it should match, not beat
        checks += quantization_checks(report)
    else:
        checks += [beats(report, "base"), beats(report, "few_shot"), beats_parent(report, version)]
    checks += forgetting_checks(report)
    checks += [not_worse_than_current(report, alias, holder) for alias, holder in (holders or {}).items()]
    if report.gate.min_human_win_rate is not None:
        checks += [human_win_rate(report, alias, holder, human) for alias, holder in (holders or {"-": None}).items()]
    return checks
