"""Printing a prepared dataset's manifest for people."""

from __future__ import annotations

from rich.console import Console
from rich.table import Table

from rayft.data.manifest import Manifest


def print_manifest(manifest: Manifest, out_dir) -> None:
    """Counts, reject reasons and the dataset hash as a table."""
    console = Console()
    table = Table(title=f"dataset {manifest.dataset_hash[:12]}  ({out_dir})", show_header=False)
    for key, value in manifest.counts.model_dump().items():
        table.add_row(key, str(value))
    for reason, n in manifest.rejects_by_reason.items():
        table.add_row(f"  rejected: {reason}", str(n))
    if manifest.pii.found:
        action = {"scrub": "scrubbed", "drop": "dropped", "off": "kept"}[manifest.pii.mode]
        table.add_row(f"PII {action}", ", ".join(f"{k} {n}" for k, n in sorted(manifest.pii.found.items())))
    console.print(table)
    for warning in manifest.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}")
