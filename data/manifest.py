"""A prepared dataset's manifest: what `rayft data prepare` returns and writes as `manifest.json`,
and what training reads back (its `dataset_hash` becomes the version's dataset lineage)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel

MANIFEST = "manifest.json"  # written last: a dataset folder without it is incomplete


class Counts(BaseModel):
    """Where every input record ended: input = kept + rejected + duplicates + leaked, and
    kept = train + val + test."""

    input: int
    kept: int
    rejected: int
    duplicates_exact: int
    duplicates_near: int
    leaked: int
    train: int
    val: int
    test: int

    def removed(self) -> int:
        return self.rejected + self.duplicates_exact + self.duplicates_near + self.leaked


class PiiFindings(BaseModel):
    mode: str  # scrub, drop or off
    found: dict[str, int]


class Manifest(BaseModel):
    """One dataset version: its content hash, what kind of records it holds (chat records for SFT,
    or preference pairs, which also carry an SFT example each), the counts, and how it was made."""

    dataset_hash: str
    kind: Literal["sft", "preference"] = "sft"  # manifests written before pairs existed hold SFT records
    counts: Counts
    rejects_by_reason: dict[str, int]
    pii: PiiFindings
    inputs: list[str]
    config: dict
    tokenizer: str | None
    stats: dict
    warnings: list[str]

    def to_json(self) -> str:
        return self.model_dump_json(indent=2) + "\n"
