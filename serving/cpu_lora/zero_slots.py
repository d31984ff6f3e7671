"""Which adapter slots of a stacked LoRA weight are all zero, remembered per tensor version.

vLLM wraps every LoRA-capable module (all projections, often lm_head and the embedding) and
zero-fills the slot of an adapter that does not target that module: an adapter trained on
q/k/v/o still costs the MLP and lm_head LoRA matmuls, with weights of zeros. Skipping those is
exact (x @ 0 adds nothing) and saves most of the work, above all when several adapters share
a batch and each of their weights has to be read.

The flags are recomputed (one pass over the tensor) whenever the tensor's version counter has
moved, which every in-place write does: vLLM loads and clears slots with `copy_` and item
assignment. Tensors without a version counter (inference tensors) are never skipped.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable

import torch

# id(tensor) -> (weak reference, version seen, per-slot "has a nonzero value")
_flags: dict[int, tuple[weakref.ref, int, tuple[bool, ...]]] = {}


def slot_flags(weights: torch.Tensor) -> tuple[bool, ...] | None:
    """Per slot (first dim), whether it holds a nonzero value; None when it cannot be tracked."""
    if weights.is_inference():
        return None
    key, version = id(weights), weights._version
    hit = _flags.get(key)
    if hit is not None and hit[0]() is weights and hit[1] == version:
        return hit[2]
    flags = tuple(weights.flatten(1).any(1).tolist())
    _flags[key] = (weakref.ref(weights, lambda _, key=key: _flags.pop(key, None)), version, flags)
    return flags


# id(tensor) -> (weak reference, version seen, slots, dtype, contiguous [groups, in, out] copy)
_expand_copies: dict[int, tuple[weakref.ref, int, tuple[int, ...], torch.dtype, torch.Tensor]] = {}


def transposed_slots(weights: torch.Tensor, slots: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``[len(slots), in, out]``: the slots' matrices of a stacked ``[slots, (1,) out, in]`` weight,
    transposed into contiguous memory, kept while the weight's version and the slot set are unchanged.

    A batched matmul reads contiguous right-hand sides about twice as fast as transposed views; the
    copy is made once per batch composition (decode steps keep it) and whenever vLLM writes a slot.
    """
    key, version = id(weights), getattr(weights, "_version", None)
    hit = _expand_copies.get(key)
    if (hit is not None and version is not None and hit[0]() is weights and hit[1] == version
            and hit[2] == slots and hit[3] == dtype):
        return hit[4]
    w3 = weights.flatten(0, 1) if weights.dim() == 4 else weights
    copy = w3[list(slots)].to(dtype).transpose(1, 2).contiguous()
    if version is not None and not weights.is_inference():
        _expand_copies[key] = (weakref.ref(weights, lambda _, key=key: _expand_copies.pop(key, None)), version,
                               slots, dtype, copy)
    return copy


def any_nonzero(weights: torch.Tensor, slots: Iterable[int]) -> bool:
    """False only when every slot in `slots` is known to be all zero in `weights`."""
    flags = slot_flags(weights)
    return flags is None or any(flags[s] for s in slots)


def contributes(a: torch.Tensor, b: torch.Tensor, slots: Iterable[int]) -> bool:
    """False only when, for every slot, its shrink (`a`) or expand (`b`) weight is all zero."""
    fa, fb = slot_flags(a), slot_flags(b)
    if fa is None or fb is None:
        return True
    return any(fa[s] and fb[s] for s in slots)
