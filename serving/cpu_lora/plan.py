"""How the rows of a LoRA batch split by adapter slot, computed once per batch.

Every LoRA layer of a forward step receives the same adapter indices (vLLM's punica wrapper
fills them once per step), so the grouping is built on the first op call and reused while the
indices' contents stay equal; the check is an exact tensor comparison, so a stale grouping can
never be used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

# Batched-matmul layout is used while padding the groups to equal size at most doubles the rows.
_MAX_PADDING = 2.0
# Rows are taken run by run (no gather) when runs of one adapter are this long on average: prefill,
# where each sequence's tokens are contiguous; decode batches interleave adapters row by row.
_MIN_RUN_ROWS = 16


class Padded(NamedTuple):
    """Groups padded to `m` rows each, for one batched matmul over the adapters present."""

    m: int
    gather: torch.Tensor  # [groups * m] input row feeding each padded position
    positions: torch.Tensor  # [rows] padded position of each of `Plan.rows`
    slots: torch.Tensor  # [groups] adapter slot of each group
    slot_range: tuple[int, int] | None  # (first, last + 1) when the slots are consecutive


class Plan(NamedTuple):
    """Rows by adapter slot. Negative slots (-1: no adapter) are never part of a group."""

    n: int  # number of rows
    slot: int | None  # every row uses this slot (negative: no row has an adapter)
    rows: torch.Tensor | None = None  # else: rows having an adapter, grouped by slot
    groups: tuple[tuple[int, int, int], ...] = ()  # (slot, start, end) ranges of `rows`
    padded: Padded | None = None  # set when a batched matmul is worth it
    # [n] where each row's result lies in the grouped results (`rows` order, or the padded
    # layout), one past the end (a zero row) for rows without adapter
    inv: torch.Tensor | None = None
    has_base: bool = False  # some rows have no adapter
    slots: tuple[int, ...] = ()  # the adapter slots present, in group order
    # (slot, start, end) runs of consecutive rows with one adapter, when they are long (see
    # _MIN_RUN_ROWS); rows without adapter are in no run
    runs: tuple[tuple[int, int, int], ...] | None = None


def _padded(rows: torch.Tensor, groups: tuple[tuple[int, int, int], ...]) -> Padded | None:
    """The batched layout for `groups`, or None when padding would waste too much."""
    m = max(end - start for _, start, end in groups)
    if len(groups) * m > _MAX_PADDING * rows.numel():
        return None
    positions = torch.cat([torch.arange(g * m, g * m + end - start) for g, (_, start, end) in enumerate(groups)]).to(
        rows.device
    )
    gather = torch.full((len(groups) * m,), int(rows[0]), dtype=rows.dtype, device=rows.device)
    gather[positions] = rows
    slots = [slot for slot, _, _ in groups]
    consecutive = slots == list(range(slots[0], slots[0] + len(slots)))
    return Padded(
        m,
        gather,
        positions,
        torch.tensor(slots, dtype=torch.long, device=rows.device),
        (slots[0], slots[-1] + 1) if consecutive else None,
    )


def _long_runs(indices: torch.Tensor) -> tuple[tuple[int, int, int], ...] | None:
    """The runs of equal consecutive indices (adapter rows only), or None when they are short."""
    n = indices.numel()
    starts = [0] + (torch.nonzero(indices[1:] != indices[:-1]).flatten() + 1).tolist()
    if n < _MIN_RUN_ROWS * len(starts):
        return None
    slots = indices[starts].tolist()
    return tuple((slot, start, end) for slot, start, end in zip(slots, starts, starts[1:] + [n]) if slot >= 0)


def make_plan(indices: torch.Tensor) -> Plan:
    """Group the rows of a batch by their adapter slot (`indices`, one per row)."""
    n = indices.numel()
    if n == 0:
        return Plan(0, -1)
    lo, hi = (int(v) for v in torch.aminmax(indices))
    if lo == hi:
        return Plan(n, lo, slots=(lo,) if lo >= 0 else ())
    sorted_idx, order = torch.sort(indices, stable=True)
    slots, counts = torch.unique_consecutive(sorted_idx, return_counts=True)
    groups, start = [], 0
    for slot, count in zip(slots.tolist(), counts.tolist()):
        if slot >= 0:
            groups.append((slot, start, start + count))
        start += count
    skip = groups[0][1] if groups else start  # negative slots sort first
    rows = order[skip:]
    groups = tuple((slot, a - skip, b - skip) for slot, a, b in groups)
    padded = _padded(rows, groups) if groups else None
    if padded is None:
        where = torch.arange(rows.numel(), device=rows.device)
        inv = torch.full((n,), rows.numel(), dtype=torch.long, device=rows.device)
    else:
        where = padded.positions
        inv = torch.full((n,), padded.gather.numel(), dtype=torch.long, device=rows.device)
    inv[rows] = where
    slots = tuple(slot for slot, _, _ in groups)
    return Plan(n, None, rows, groups, padded, inv, rows.numel() < n, slots, _long_runs(indices))


# Per kind of key (token indices; prefill segments): (key tensors, plan) of the last batch seen.
_last: dict[int, tuple[tuple[torch.Tensor, ...], Plan]] = {}


def _same(a: tuple[torch.Tensor, ...], b: tuple[torch.Tensor, ...]) -> bool:
    """Exactly equal tensors, pairwise."""
    return len(a) == len(b) and all(
        x.shape == y.shape and x.dtype == y.dtype and x.device == y.device and torch.equal(x, y) for x, y in zip(a, b)
    )


def cached_plan(key: tuple[torch.Tensor, ...], make: Callable[[], Plan]) -> Plan:
    """`make()`, reused while the `key` tensors (what the plan is computed from) are unchanged."""
    last = _last.get(len(key))
    if last is not None and _same(last[0], key):
        return last[1]
    plan = make()
    _last[len(key)] = (tuple(k.clone() for k in key), plan)
    return plan


def plan_for_tokens(indices: torch.Tensor) -> Plan:
    """The plan for per-token adapter indices (bgmv ops)."""
    return cached_plan((indices,), lambda: make_plan(indices))


def plan_for_segments(lora_indices: torch.Tensor, seq_lens: torch.Tensor) -> Plan:
    """The plan for prefill segments: one adapter index per run of `seq_lens` tokens (sgmv ops)."""
    return cached_plan(
        (lora_indices, seq_lens),
        lambda: make_plan(torch.repeat_interleave(lora_indices, seq_lens)),
    )
