"""The registry for people: `rayft registry list|show|alias|rollback|delete` as tables or JSON.

Every command has a `--json` form that prints the same information as plain data, for scripts.
"""

from __future__ import annotations

import json
import time

from rich.console import Console
from rich.table import Table

from rayft.registry import Alias, AliasChange, ModelVersion, Ref, Registry, RegistryError, parse_ref


def print_json(data) -> None:
    print(json.dumps(data, indent=2, sort_keys=True))


def aliases_by_version(registry: Registry, name: str | None = None) -> dict[str, list[str]]:
    """`name:version` → the aliases pointing at it (with their weight when split)."""
    found: dict[str, list[str]] = {}
    for alias in registry.aliases(name):
        for version, weight in sorted(alias.targets.items()):
            share = f" ({weight:g}/{sum(alias.targets.values()):g})" if len(alias.targets) > 1 else ""
            found.setdefault(f"{alias.name}:{version}", []).append(alias.alias + share)
    return found


def headline_metrics(version: ModelVersion) -> str:
    """Training losses and the eval's primary metric, briefly."""
    parts = [
        f"{k}={version.metrics[k]:.4g}"
        for k in ("final_loss", "best_val_loss")
        if isinstance(version.metrics.get(k), float)
    ]
    report = version.eval_report or {}
    primary = report.get("primary_metric")
    if primary and primary in report.get("metrics", {}).get("candidate", {}):
        parts.append(f"eval {primary}={report['metrics']['candidate'][primary]:.4g}")
    return ", ".join(parts)


def list_versions(registry: Registry, name: str | None, as_json: bool) -> None:
    """Every version (of `name`) with the aliases pointing at it."""
    versions, aliases = registry.list(name), aliases_by_version(registry, name)
    if as_json:
        print_json([v.to_dict() | {"aliases": aliases.get(v.ref, [])} for v in versions])
        return
    table = Table("ref", "aliases", "kind", "base model", "dataset", "metrics", "artifact")
    for v in versions:
        table.add_row(
            v.ref,
            ", ".join(aliases.get(v.ref, [])),
            v.kind,
            v.base_model,
            (v.dataset_hash or "")[:12],
            headline_metrics(v),
            v.artifact_uri,
        )
    Console().print(table)


def lineage(registry: Registry, version: ModelVersion) -> list[str]:
    """The version, the version it continued, and so on back to the base the chain started from,
    each version with how it was trained (`rayft registry show`)."""
    chain, seen, current = [], set(), version
    while current.ref not in seen:
        seen.add(current.ref)
        chain.append(f"{current.ref} ({current.config.get('train', {}).get('method', current.kind)})")
        if not current.parent:
            chain.append(current.base_model)
            break
        try:
            current = registry.get(current.parent)
        except RegistryError:  # a parent no longer registered: named as it was recorded
            chain.append(current.parent)
            break
    return chain


def show(registry: Registry, ref: str, as_json: bool, extra: dict[str, str | None] | None = None) -> None:
    """One version with its lineage (and `extra` rows: what reviewers and traffic said), or one
    alias with its targets and history."""
    parsed = parse_ref(ref)
    if parsed.alias:
        show_alias(registry, ref, as_json)
        return
    version = registry.get(ref)
    aliases = aliases_by_version(registry, version.name).get(version.ref, [])
    if as_json:
        print_json(
            version.to_dict()
            | {"aliases": aliases, "lineage": lineage(registry, version)}
            | {k.replace(" ", "_"): v for k, v in (extra or {}).items()}
        )
        return
    table = Table(title=version.ref, show_header=False)
    rows = {
        "kind": version.kind,
        "project": version.project or "(the endpoint's own)",
        "aliases": ", ".join(aliases),
        "base model": version.base_model,
        "artifact": version.artifact_uri,
        "weights hash": version.weights_hash,
        "dataset hash": version.dataset_hash,
        "parent": version.parent,
        "lineage": " ← ".join(lineage(registry, version)),
        "code revision": version.code_revision,
        "created": _when(version.created_at),
        "training": headline_metrics(version),
        "quantization": quantization_line(version.config.get("quantization")),
        "run": version.metrics.get("run_dir"),
        "eval report": (version.eval_report or {}).get("path"),
    } | (extra or {})
    for key, value in rows.items():
        table.add_row(key, "" if value is None else str(value))
    Console().print(table)


def quantization_line(lineage: dict | None) -> str | None:
    """A quantized version's scheme, method, calibration and size, in one line (`rayft quantize`)."""
    if not lineage:
        return None
    calibration = lineage.get("calibration")
    how = f"{lineage['method']} on {calibration['records']} records" if calibration else lineage["method"]
    size = f"{lineage['bytes_before'] / 2**20:.1f} → {lineage['bytes_after'] / 2**20:.1f} MiB"
    return f"{lineage['scheme']} ({how}) of {lineage['source']}, {size}"


def show_alias(registry: Registry, ref: str, as_json: bool) -> None:
    targets = registry.alias_targets(ref)
    parsed = parse_ref(ref)
    history = registry.history(parsed.name, parsed.alias)
    if as_json:
        print_json(
            {
                "ref": ref,
                "targets": [{"ref": v.ref, "weight": w, "artifact_uri": v.artifact_uri} for v, w in targets],
                "history": [c.to_dict() for c in history],
            }
        )
        return
    table = Table("version", "weight", "artifact", title=ref)
    for version, weight in targets:
        table.add_row(version.ref, f"{weight:g}", version.artifact_uri)
    Console().print(table)
    print_history(history)


def print_history(history: list[AliasChange]) -> None:
    table = Table("when", "action", "targets", "from", "actor", "reason", title="history")
    for change in history:
        table.add_row(
            _when(change.created_at),
            change.action,
            _targets(change.targets),
            _targets(change.previous),
            change.actor or "",
            change.reason or "",
        )
    Console().print(table)


def print_alias(alias: Alias, verb: str, as_json: bool) -> None:
    if as_json:
        print_json(alias.to_dict())
    else:
        print(f"{verb} {alias.ref} → {_targets(alias.targets)}")


def _targets(targets: dict[int, float] | None) -> str:
    if not targets:
        return "-"
    if len(targets) == 1:
        return f"v{next(iter(targets))}"
    return ", ".join(f"v{v}={w:g}" for v, w in sorted(targets.items()))


def _when(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(timestamp))


def parse_targets(items: list[str]) -> int | dict[int, float]:
    """CLI targets `3` or `3=90 4=10` as set_alias takes them; a bad item raises RegistryError naming it."""
    weights: dict[int, float] = {}
    for item in items:
        version, _, weight = item.partition("=")
        try:
            weights[int(version)] = float(weight) if weight else 1.0
        except ValueError:
            raise RegistryError(f"target {item!r}: expected VERSION or VERSION=WEIGHT (e.g. 3=90 4=10)") from None
    return next(iter(weights)) if len(items) == 1 and "=" not in items[0] else weights


def alias_ref(text: str) -> Ref:
    """`NAME:ALIAS` parsed; anything else raises RegistryError naming it."""
    ref = parse_ref(text)
    if not ref.alias:
        raise RegistryError(f"{text!r}: give the alias as NAME:ALIAS")
    return ref
