"""Printing a prepared dataset's manifest for people."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table


def print_manifest(manifest: dict, out_dir) -> None:
    """Counts, reject reasons and the dataset hash as a table."""
    console = Console()
    counts = manifest["counts"]
    table = Table(title=f"dataset {manifest['dataset_hash'][:12]}  ({out_dir})", show_header=False)
    for key, value in counts.items():
        table.add_row(key, str(value))
    for reason, n in manifest.get("rejects_by_reason", {}).items():
        table.add_row(f"  rejected: {reason}", str(n))
    found = manifest.get("pii", {}).get("found", {})
    if found:
        action = {"scrub": "scrubbed", "drop": "dropped", "off": "kept"}[manifest["pii"]["mode"]]
        table.add_row(f"PII {action}", ", ".join(f"{k} {n}" for k, n in sorted(found.items())))
    console.print(table)
    for warning in manifest.get("warnings", []):
        console.print(f"[yellow]warning:[/yellow] {warning}")
