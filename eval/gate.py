"""The promotion gate: a version moves to an alias only if its eval says fine-tuning was worth it.

`rayft promote NAME:VERSION --alias prod` reads the version's eval report from the registry and
checks that (1) the report is about these exact weights, (2) the candidate beats the base and
(3) the few-shot base by at least the configured margin on the primary metric, and (4) its answer
rate on the forgetting set drops no more than allowed (and, when a limit is set, its perplexity
there rises no more). Any failed check refuses the move and says why; `--force --reason "..."`
moves it anyway and records the reason and the failed checks in the alias history. The settings
come from the eval report (the config the eval ran with).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from rayft.config import LOWER_IS_BETTER
from rayft.registry import Alias, ModelVersion, Registry, RegistryError, parse_ref

BASELINES = {"base": "the base", "few_shot": "the few-shot base"}


@dataclass
class Check:
    name: str
    passed: bool
    detail: str

    def to_dict(self) -> dict:
        return asdict(self)


class PromotionRefused(RegistryError):
    """The gate said no; `checks` says why."""

    def __init__(self, ref: str, alias: str, checks: list[Check]):
        self.checks = checks
        failed = "; ".join(c.detail for c in checks if not c.passed)
        super().__init__(f"{ref} not promoted to {alias}: {failed}")


def beats(report: dict, baseline: str) -> Check:
    """The candidate is better than `baseline` on the primary metric by at least the margin."""
    primary, margin = report["primary_metric"], report["gate"]["margin"]
    candidate, other = report["metrics"]["candidate"].get(primary), report["metrics"][baseline].get(primary)
    name = f"beats {BASELINES[baseline]}"
    if candidate is None or other is None:
        return Check(name, False, f"{primary} was not measured for the candidate and {BASELINES[baseline]}")
    gain = other - candidate if primary in LOWER_IS_BETTER else candidate - other
    passed = gain >= margin and gain > 0
    return Check(name, passed, f"{primary} {candidate:.4g} vs {BASELINES[baseline]} {other:.4g}: "
                               f"{'better' if gain > 0 else 'not better'} by {gain:+.4g} (needs > 0 and ≥ {margin:g})")


def forgetting_checks(report: dict) -> list[Check]:
    """The answer-rate drop on the forgetting set, and its perplexity rise when a limit is set."""
    forgetting, gate = report.get("forgetting"), report["gate"]
    if not forgetting:
        return [Check("forgetting", True, "skipped: the eval ran with eval.forgetting off")]
    drop, limit = forgetting["drop"], gate["max_forgetting_drop"]
    checks = [Check("forgetting", drop <= limit, f"forgetting-set answer rate {forgetting['base']['answer_rate']:.3f} "
                                                 f"→ {forgetting['candidate']['answer_rate']:.3f}: drop {drop:+.3f} "
                                                 f"(allowed ≤ {limit:g})")]
    rise, limit = forgetting.get("perplexity_increase"), gate.get("max_forgetting_perplexity_increase")
    if limit is not None:
        passed = rise is not None and rise <= limit
        measured = "not measured (eval.perplexity off)" if rise is None else f"{rise:+.0%}"
        checks.append(Check("forgetting perplexity", passed, f"forgetting-set perplexity {measured} "
                                                             f"(allowed ≤ {limit:+.0%})"))
    return checks


def gate_checks(version: ModelVersion) -> list[Check]:
    """Every check of the gate on `version`'s eval report (a missing report fails the gate)."""
    report = version.eval_report
    if not report:
        return [Check("evaluated", False, f"{version.ref} has no eval report: run `rayft eval CONFIG --model {version.ref}`")]
    same = report.get("candidate") == version.ref and report.get("weights_hash") == version.weights_hash
    checks = [Check("evaluated", same, f"report for {report.get('candidate')} with weights "
                                       f"{str(report.get('weights_hash'))[:12]}" + ("" if same else
                                       f", but {version.ref} has weights {str(version.weights_hash)[:12]}"))]
    checks.append(beats(report, "base"))
    if "few_shot" in report["metrics"]:
        checks.append(beats(report, "few_shot"))
    else:  # shown, so nobody mistakes a gate without the few-shot comparison for one with it
        checks.append(Check(f"beats {BASELINES['few_shot']}", True, "skipped: the eval ran with eval.few_shot 0"))
    return checks + forgetting_checks(report)


def promote(registry: Registry, ref: str, alias: str, *, force: bool = False, reason: str | None = None,
            actor: str | None = None) -> tuple[Alias, list[Check]]:
    """Point `alias` at the version `ref` if the gate passes (or if forced, with a reason); the
    checks are recorded with the move. Raises PromotionRefused with the failed checks otherwise."""
    if parse_ref(ref).alias:
        raise RegistryError(f"{ref!r}: promote a version (NAME:VERSION), not an alias")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    version = registry.get(ref)
    checks = gate_checks(version)
    passed = all(c.passed for c in checks)
    if not passed and not force:
        raise PromotionRefused(version.ref, f"{version.name}:{alias}", checks)
    details = {"gate": [c.to_dict() for c in checks], "passed": passed, "forced": not passed,
               "report": (version.eval_report or {}).get("path")}
    moved = registry.set_alias(version.name, alias, version.version, reason=reason or "promotion gate passed",
                               actor=actor, details=details)
    return moved, checks


def print_checks(ref: str, alias: str, checks: list[Check]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "", "detail", title=f"promotion gate: {ref} → {alias}")
    for check in checks:
        table.add_row(check.name, "[green]pass[/]" if check.passed else "[red]FAIL[/]", check.detail)
    Console().print(table)
