"""Seeded, deterministic, stratified train/val/test assignment.

Within each label group (all records form one group when no label is configured) records are
ordered by a seeded hash of their content (`split_key`: a preference pair's prompt alone, so pairs
sharing a prompt sit together), then cut at the configured fractions. The same records
and seed always give the same split, whatever the input order or the number of Ray workers, and
each class keeps its proportions to within one record.
"""

from __future__ import annotations

import hashlib

import pandas as pd


def split_sizes(n: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of `n` records go to val, test and train (train takes the rounding rest)."""
    val = round(n * fractions["val"])
    test = round(n * fractions["test"])
    if val + test > n:
        test = n - val
    return {"val": val, "test": test, "train": n - val - test}


def _seeded_key(split_key: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}:{split_key}".encode()).hexdigest()


def assign_group(group: pd.DataFrame, fractions: dict[str, float], seed: int) -> pd.DataFrame:
    """Add a `split` column to one label group (a Ray Data map_groups function)."""
    keys = group["split_key"].map(lambda h: _seeded_key(h, seed))
    group = group.assign(_key=keys).sort_values(["_key", "order"]).drop(columns="_key")
    sizes = split_sizes(len(group), fractions)
    names = ["val"] * sizes["val"] + ["test"] * sizes["test"] + ["train"] * sizes["train"]
    return group.assign(split=names)


def assign_splits(kept, fractions: dict[str, float], seed: int):
    """A Ray Dataset of kept records with a `split` column, stratified by its `stratum` column."""
    return kept.groupby("stratum").map_groups(
        assign_group, batch_format="pandas", fn_kwargs={"fractions": fractions, "seed": seed}
    )
