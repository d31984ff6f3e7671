"""The promotion gate: a version moves to an alias only if its eval says it is worth serving.

`rayft promote NAME:VERSION --alias prod` reads the version's eval report from the registry and
checks that (1) the report is about these exact weights, (2) it was measured on at least
`min_test_records` test records, (3) the candidate beats the base and (4) the few-shot base by at
least the margin on the primary metric, (5) its answer rate on the forgetting set drops no more
than allowed (and, when a limit is set, its perplexity there rises no more), and (6) it is not worse
than the version the alias points at now, beyond `regression_tolerance`, on the same test split.

A check the eval could not run (no few-shot base, no forgetting set, perplexity off) is *skipped*,
and a skipped check fails unless the eval config waives it by name (`eval.gate.waive`); waived
checks are shown and recorded as such. Any failed check refuses the move and says why;
`--force --reason "..."` moves it anyway and records the reason and the checks in the alias history.
The settings come from the eval report (the config the eval ran with).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rayft.config import LOWER_IS_BETTER, GateConfig
from rayft.registry import Alias, ModelVersion, Registry, RegistryError, parse_ref

BASELINES = {"base": "the base", "few_shot": "the few-shot base"}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str
    waived: bool = False

    def to_dict(self) -> dict:
        return asdict(self)


class PromotionRefused(RegistryError):
    """The gate said no; `checks` says why."""

    def __init__(self, ref: str, alias: str, checks: list[Check]):
        self.checks = checks
        failed = "; ".join(c.detail for c in checks if not c.passed)
        super().__init__(f"{ref} not promoted to {alias}: {failed}")


def skipped(name: str, why: str, gate: GateConfig) -> Check:
    """A check the eval did not run: a pass only when the eval config waives it by name."""
    if name in gate.waive:
        return Check(name, True, f"waived (eval.gate.waive): {why}", waived=True)
    return Check(name, False, f"skipped: {why}; a skipped check does not pass unless eval.gate.waive names {name!r}")


def gain(report: dict, candidate: float, other: float) -> float:
    """How much better `candidate` is than `other` on the primary metric (negative: worse)."""
    return other - candidate if report["primary_metric"] in LOWER_IS_BETTER else candidate - other


def beats(report: dict, baseline: str, gate: GateConfig) -> Check:
    """The candidate is better than `baseline` on the primary metric by at least the margin."""
    primary, name = report["primary_metric"], f"beats_{baseline}"
    if baseline not in report["metrics"]:
        return skipped(name, f"the eval ran without {BASELINES[baseline]} (eval.few_shot 0)", gate)
    candidate, other = report["metrics"]["candidate"].get(primary), report["metrics"][baseline].get(primary)
    if candidate is None or other is None:
        return Check(name, False, f"{primary} was not measured for the candidate and {BASELINES[baseline]}")
    better = gain(report, candidate, other)
    return Check(name, better >= gate.margin and better > 0,
                 f"{primary} {candidate:.4g} vs {BASELINES[baseline]} {other:.4g}: "
                 f"{'better' if better > 0 else 'not better'} by {better:+.4g} (needs > 0 and ≥ {gate.margin:g})")


def forgetting_checks(report: dict, gate: GateConfig) -> list[Check]:
    """The answer-rate drop on the forgetting set, and its perplexity rise when a limit is set."""
    forgetting = report.get("forgetting")
    if not forgetting:
        return [skipped("forgetting", "the eval ran with eval.forgetting off", gate)]
    drop, limit = forgetting["drop"], gate.max_forgetting_drop
    checks = [Check("forgetting", drop <= limit, f"forgetting-set answer rate {forgetting['base']['answer_rate']:.3f} "
                                                 f"→ {forgetting['candidate']['answer_rate']:.3f}: drop {drop:+.3f} "
                                                 f"(allowed ≤ {limit:g})")]
    rise, limit = forgetting.get("perplexity_increase"), gate.max_forgetting_perplexity_increase
    if limit is not None and rise is None:
        checks.append(skipped("forgetting_perplexity", "forgetting-set perplexity was not measured "
                                                        "(eval.perplexity off)", gate))
    elif limit is not None:
        checks.append(Check("forgetting_perplexity", rise <= limit, f"forgetting-set perplexity {rise:+.0%} "
                                                                    f"(allowed ≤ {limit:+.0%})"))
    return checks


def current_metric(report: dict, holder: ModelVersion) -> tuple[float | None, str]:
    """The primary metric of `holder` on the candidate's test split, and where it comes from: measured
    beside the candidate in this eval, or the holder's own eval on the same dataset and test size."""
    primary = report["primary_metric"]
    beside = [c for c in report.get("compared", {}).values()
              if c["ref"] == holder.ref and c["weights_hash"] == holder.weights_hash]
    if beside and holder.ref in report["metrics"]:
        return report["metrics"][holder.ref].get(primary), "measured beside the candidate"
    own = holder.eval_report or {}
    same_split = all(own.get(k) == report.get(k) for k in ("dataset_hash", "n", "task", "primary_metric"))
    if same_split and own.get("candidate") == holder.ref and own.get("weights_hash") == holder.weights_hash:
        return own["metrics"]["candidate"].get(primary), "from its own eval on the same test split"
    return None, ""


def not_worse_than_current(report: dict, alias: str, holder: ModelVersion | None, gate: GateConfig) -> Check:
    """The candidate is not worse than the version `alias` points at now, beyond the tolerance."""
    name = "not_worse_than_current"
    if holder is None:
        return Check(name, True, f"{alias} points at no version yet")
    if holder.ref == report["candidate"]:
        return Check(name, True, f"{alias} already points at {holder.ref}")
    primary = report["primary_metric"]
    other, source = current_metric(report, holder)
    candidate = report["metrics"]["candidate"].get(primary)
    if other is None or candidate is None:
        return Check(name, False, f"{holder.ref} ({alias} now) has no {primary} on this test split: run "
                                  f"`rayft eval CONFIG --model {report['candidate']}` again, which evaluates the "
                                  "current version beside the candidate")
    better = gain(report, candidate, other)
    return Check(name, -better <= gate.regression_tolerance,
                 f"{primary} {candidate:.4g} vs {holder.ref} ({alias} now) {other:.4g}, {source}: "
                 f"{'worse' if better < 0 else 'not worse'} by {max(-better, 0):.4g} "
                 f"(allowed ≤ {gate.regression_tolerance:g})")


def gate_checks(version: ModelVersion, holders: dict[str, ModelVersion | None] | None = None) -> list[Check]:
    """Every check of the gate on `version`'s eval report (a missing report fails the gate), and the
    comparison with each of `holders` ({NAME:ALIAS: the version it points at now, or None})."""
    report = version.eval_report
    if not report:
        return [Check("evaluated", False, f"{version.ref} has no eval report: run `rayft eval CONFIG --model {version.ref}`")]
    gate = GateConfig.model_validate(report.get("gate", {}))
    same = report.get("candidate") == version.ref and report.get("weights_hash") == version.weights_hash
    checks = [Check("evaluated", same, f"report for {report.get('candidate')} with weights "
                                       f"{str(report.get('weights_hash'))[:12]}" + ("" if same else
                                       f", but {version.ref} has weights {str(version.weights_hash)[:12]}"))]
    n = report.get("n", 0)
    checks.append(Check("test_size", n >= gate.min_test_records,
                        f"{n} test records (needs ≥ {gate.min_test_records}, eval.gate.min_test_records)"))
    checks += [beats(report, "base", gate), beats(report, "few_shot", gate)]
    checks += forgetting_checks(report, gate)
    return checks + [not_worse_than_current(report, alias, holder, gate) for alias, holder in (holders or {}).items()]


def current_holder(registry: Registry, alias: str) -> ModelVersion | None:
    """The version `NAME:ALIAS` points at now (its primary target), None when it does not exist."""
    try:
        return registry.get(alias)
    except RegistryError:
        return None


def promote(registry: Registry, ref: str, alias: str, *, force: bool = False, reason: str | None = None,
            actor: str | None = None) -> tuple[Alias, list[Check]]:
    """Point `alias` at the version `ref` if the gate passes (or if forced, with a reason); the
    checks are recorded with the move. Raises PromotionRefused with the failed checks otherwise."""
    if parse_ref(ref).alias:
        raise RegistryError(f"{ref!r}: promote a version (NAME:VERSION), not an alias")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    version = registry.get(ref)
    target = f"{version.name}:{alias}"
    checks = gate_checks(version, {target: current_holder(registry, target)})
    passed = all(c.passed for c in checks)
    if not passed and not force:
        raise PromotionRefused(version.ref, target, checks)
    details = {"gate": [c.to_dict() for c in checks], "passed": passed, "forced": not passed,
               "waived": [c.name for c in checks if c.waived], "report": (version.eval_report or {}).get("path")}
    moved = registry.set_alias(version.name, alias, version.version, reason=reason or "promotion gate passed",
                               actor=actor, details=details, gated=True)
    return moved, checks


def print_checks(ref: str, alias: str, checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "", "detail", title=f"promotion gate: {ref} → {alias}")
    for check in checks:
        verdict = "[yellow]waived[/]" if check.waived else "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        table.add_row(check.name, verdict, check.detail)
    Console().print(table)
