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


# ids of the source tensors -> (their weak references, versions seen, slots, dtype, the copy)
_copies: dict[tuple[int, ...], tuple[tuple[weakref.ref, ...], tuple[int, ...], tuple[int, ...], torch.dtype,
                                     torch.Tensor]] = {}


def transposed_slots(weights: tuple[torch.Tensor, ...], slots: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``[len(slots), in, sum of outs]``: the slots' matrices of stacked ``[slots, (1,) out, in]``
    weights, side by side and transposed into contiguous memory, kept while every weight's version
    and the slot set are unchanged: one weight gives a mixed batch's expand weights, every slice's
    shrink weights of a layer give one batched matmul for all slices.

    A batched matmul reads contiguous right-hand sides about twice as fast as transposed views; the
    copy is made once per batch composition (decode steps keep it) and whenever vLLM writes a slot.
    """
    key = tuple(id(w) for w in weights)
    versions = tuple(getattr(w, "_version", -1) for w in weights)
    hit = _copies.get(key)
    if (hit is not None and all(ref() is w for ref, w in zip(hit[0], weights)) and hit[1] == versions
            and hit[2] == slots and hit[3] == dtype):
        return hit[4]
    picked = [(w.flatten(0, 1) if w.dim() == 4 else w)[list(slots)] for w in weights]
    copy = torch.cat(picked, dim=1).to(dtype).transpose(1, 2).contiguous()
    if not any(w.is_inference() for w in weights):
        refs = tuple(weakref.ref(w, lambda _, key=key: _copies.pop(key, None)) for w in weights)
        _copies[key] = (refs, versions, slots, dtype, copy)
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
