"""Which adapter slots of a stacked LoRA weight are all zero, remembered per tensor version.

vLLM wraps every LoRA-capable module (all projections, often lm_head and the embedding) and
zero-fills the slot of an adapter that does not target that module: an adapter trained on
q/k/v/o still costs the MLP and lm_head LoRA matmuls, with weights of zeros. Skipping those is
exact (x @ 0 adds nothing) and saves most of the work, above all when several adapters share
a batch and each of their weights has to be read.

The flags are recomputed (one pass over the tensor) whenever the tensor's version counter has
moved, which every in-place write does: vLLM loads and clears slots with `copy_` and item
assignment. Tensors without a version counter (inference tensors) are never skipped.

`layer_weights` keeps, per layer, the batch's adapters' weights laid out for the fused linear op
(`.linear`), under the same versions.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterable
from typing import NamedTuple

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


class LayerWeights(NamedTuple):
    """One LoRA layer's weights for the adapter slots of a batch, laid out for its matmuls: only
    the slices some adapter there contributes to ("live"), each slot's matrices transposed into
    contiguous memory (a matmul reads them about twice as fast as transposed views)."""

    shrink: torch.Tensor  # [slots, in, rank * live slices] float32: the live slices' A side by side
    expand: tuple[torch.Tensor, ...]  # per live slice: [slots, rank, size] in the output's dtype
    columns: tuple[tuple[int, int], ...]  # per live slice: (first column, size) in the output
    partial: bool  # some slice is not live (its columns get nothing)


# id of a layer's first shrink weight -> (weak references to all its weights, their versions, the key, the layout)
_layouts: dict[int, tuple[tuple[weakref.ref, ...], tuple[int, ...], tuple, LayerWeights | None]] = {}


def _transposed(weights: list[torch.Tensor], slots: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """``[len(slots), in, sum of outs]``: the slots' matrices of stacked ``[slots, (1,) out, in]``
    weights, side by side and transposed into contiguous memory."""
    picked = [(w.flatten(0, 1) if w.dim() == 4 else w)[list(slots)] for w in weights]
    return torch.cat(picked, dim=1).to(dtype).transpose(1, 2).contiguous()


def layer_weights(
    a_stacked: tuple[torch.Tensor, ...],
    b_stacked: tuple[torch.Tensor, ...],
    slices: tuple[int, ...],
    slots: tuple[int, ...],
    dtype: torch.dtype,
) -> LayerWeights | None:
    """The layout of a layer's shrink (`a_stacked`) and expand (`b_stacked`) weights for `slots`,
    expand in `dtype`; None when no adapter in `slots` contributes to any slice. Kept while every
    weight's version and the batch's slots, slices and dtype are unchanged: decode steps reuse it,
    and it is rebuilt when the set of adapters changes or vLLM writes a slot."""
    weights = (*a_stacked, *b_stacked)
    key = (slots, tuple(slices), dtype)
    tracked = not any(w.is_inference() for w in weights)  # inference tensors keep no version
    versions = tuple(w._version for w in weights) if tracked else ()
    hit = _layouts.get(id(a_stacked[0])) if tracked else None
    if hit is not None and hit[1] == versions and hit[2] == key and all(ref() is w for ref, w in zip(hit[0], weights)):
        return hit[3]
    live = [i for i, (a, b) in enumerate(zip(a_stacked, b_stacked)) if contributes(a, b, slots)]
    layout = None
    if live:
        layout = LayerWeights(
            _transposed([a_stacked[i] for i in live], slots, torch.float32),
            tuple(_transposed([b_stacked[i]], slots, dtype) for i in live),
            tuple((sum(slices[:i]), slices[i]) for i in live),
            len(live) < len(slices),
        )
    if tracked:
        first = id(a_stacked[0])
        refs = tuple(weakref.ref(w, lambda _, first=first: _layouts.pop(first, None)) for w in weights)
        _layouts[first] = (refs, versions, key, layout)
    return layout


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
