"""`rayft promote NAME:VERSION --alias prod`: move an alias through the promotion gate.

The version's eval report is read from the registry and checked (`gate.py`), including against the
version the alias points at now, and against what reviewers said of it (`review_report.py`). Any
failed check refuses the move and says why; `--force --reason "..."` moves it anyway. Either way
the move is recorded in the alias history with the actor, the reason, every check and which were
waived.
"""

from __future__ import annotations

from rayft.eval.gate import gate_checks
from rayft.eval.results import Check, EvalReport
from rayft.eval.review_report import summarize
from rayft.feedback import FeedbackStore
from rayft.registry import Alias, ModelVersion, Registry, RegistryError, parse_ref


class PromotionRefused(RegistryError):
    """The gate said no; `checks` says why."""

    def __init__(self, ref: str, alias: str, checks: list[Check]):
        self.checks = checks
        failed = "; ".join(c.detail for c in checks if not c.passed)
        super().__init__(f"{ref} not promoted to {alias}: {failed}")


def stored_report(version: ModelVersion) -> EvalReport | None:
    """The eval report the registry holds for `version`, typed."""
    return EvalReport.from_record(version.eval_report) if version.eval_report else None


def current_holder(registry: Registry, alias: str) -> ModelVersion | None:
    """The version `NAME:ALIAS` points at now (its primary target), None when it does not exist."""
    try:
        return registry.get(alias)
    except RegistryError:
        return None


def promote(
    registry: Registry,
    ref: str,
    alias: str,
    *,
    force: bool = False,
    reason: str | None = None,
    actor: str | None = None,
) -> tuple[Alias, list[Check]]:
    """Point `alias` at the version `ref` if the gate passes (or if forced, with a reason); the
    checks are recorded with the move. Raises PromotionRefused with the failed checks otherwise."""
    if parse_ref(ref).alias:
        raise RegistryError(f"{ref!r}: promote a version (NAME:VERSION), not an alias")
    if force and not (reason and reason.strip()):
        raise RegistryError("--force needs --reason: say why the gate is overridden")
    version = registry.get(ref)
    target = f"{version.name}:{alias}"
    human = summarize(FeedbackStore(registry.path), version)
    checks = gate_checks(version, stored_report(version), {target: current_holder(registry, target)}, human)
    passed = all(c.passed for c in checks)
    if not passed and not force:
        raise PromotionRefused(version.ref, target, checks)
    details = {
        "gate": [c.model_dump() for c in checks],
        "passed": passed,
        "forced": not passed,
        "waived": [c.name for c in checks if c.waived],
        "report": (version.eval_report or {}).get("path"),
    }
    moved = registry.set_alias(
        version.name,
        alias,
        version.version,
        reason=reason or "promotion gate passed",
        actor=actor,
        details=details,
        gated=True,
    )
    return moved, checks
