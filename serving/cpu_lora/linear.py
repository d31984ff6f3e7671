"""A fused `PunicaWrapperCPU.add_lora_linear` (column-parallel LoRA layers: qkv, gate_up, ...).

vLLM's version runs, per output slice, a shrink into a float32 buffer and then an expand of that
buffer into the slice, each through four Python layers and the ops in `.ops`; for a batch that
mixes adapters every op would gather its rows into adapter order and scatter them back. Here rows
that come in long runs of one adapter (a whole batch on one adapter; prefill, where each
sequence's tokens are contiguous) are taken run by run, with no gather at all; otherwise (decode,
adapters interleaved row by row) the rows are gathered once per layer, one batched matmul shrinks
every slice, and each slice's expand stays in adapter order; only the expanded result goes back
to row order, selected straight into its columns of the result that is added (no staging copy:
with weights and activations coming from memory, as in the engine, that took a sixth to a third
off the gap to one adapter, bench/RESULTS.md). Slices whose adapters are all zero there (the
adapter does not target the module) are skipped, see `.zero_slots`.
The per-call Python work is kept small, as every LoRA layer of every step calls this: the batch's
grouping is kept on the wrapper until vLLM writes its metadata again, and each layer's weights
are laid out once per set of adapters (`.zero_slots.layer_weights`).
Same arithmetic as vLLM's: the shrink in float32 (vLLM's buffer dtype), scaled, the expand in
the output's dtype.
"""

from __future__ import annotations

from typing import Any

import torch

from .ops import cast
from .plan import Plan, plan_for_segments, plan_for_tokens
from .zero_slots import LayerWeights, layer_weights

# Where vLLM's wrapper (PunicaWrapperBase) keeps a batch's adapter indices; it writes them in place.
_INDEX_BUFFERS = ("_token_lora_indices", "_lora_indices_per_batch", "_seq_lengths")


def _metadata_stamp(wrapper: Any) -> tuple | None:
    """What the wrapper's batch metadata is now, cheap to read: its index buffers' version counters
    (every in-place write moves them) and how much of them the batch uses. None when it cannot be
    read (no such buffers, or inference tensors, which keep no version)."""
    try:
        buffers = tuple(getattr(wrapper, name) for name in _INDEX_BUFFERS)
        return (
            wrapper.is_prefill,
            wrapper.no_lora,
            wrapper.batch_size,
            tuple(wrapper.indices_len),
            tuple((id(b), b._version) for b in buffers),
        )
    except (AttributeError, RuntimeError):
        return None


def _grouping(wrapper: Any) -> Plan | None:
    if wrapper.is_prefill:
        if wrapper.no_lora:
            return None
        _, seq_lens, lora_indices, *_ = wrapper.prefill_metadata
        plan = plan_for_segments(lora_indices, seq_lens)
    else:
        plan = plan_for_tokens(wrapper.token_lora_indices)
    return None if plan.slot is not None and plan.slot < 0 else plan


def batch_plan(wrapper: Any) -> Plan | None:
    """The grouping of the wrapper's current batch (None: no row has an adapter), kept on the
    wrapper while its metadata's stamp is unchanged: vLLM updates it once per step, and every
    layer of the step asks."""
    stamp = _metadata_stamp(wrapper)
    kept = getattr(wrapper, "_rayft_plan", None)
    if stamp is not None and kept is not None and kept[0] == stamp:
        return kept[1]
    plan = _grouping(wrapper)
    if stamp is not None:
        wrapper._rayft_plan = (stamp, plan)
    return plan


def _by_runs(y, x, w: LayerWeights, scale: float, slots: tuple[int, ...], runs) -> None:
    """Rows in runs of one adapter each (a whole batch on one adapter, or prefill's contiguous
    sequences): per run one matmul shrinks every slice (the slices' shrink weights side by side)
    and one fused multiply-add per slice expands into the run's rows; no gather. A prefill batch
    has a run per sequence, so the per-run work is kept to those ops."""
    rank, x32 = w.expand[0].shape[1], cast(x, torch.float32)
    for slot, start, end in runs:
        k = slots.index(slot)
        h = x32[start:end] @ w.shrink[k]
        if scale != 1.0:
            h.mul_(scale)
        h = cast(h, y.dtype)
        for j, (b, (first, size)) in enumerate(zip(w.expand, w.columns)):
            y[start:end, first : first + size].addmm_(h[:, j * rank : (j + 1) * rank], b[k])


def _mixed(y, x, w: LayerWeights, scale: float, width: int, plan: Plan) -> None:
    """Rows gathered once into equal-size adapter groups; one batched matmul shrinks every slice
    (the slices' shrink weights side by side) and one per slice expands into a buffer in group
    order, whose rows are selected back into row order straight into the slice's columns of one
    result; one add puts that into `y`."""
    pad, groups = plan.padded, len(plan.groups)
    k, rank = groups * pad.m, w.expand[0].shape[1]
    xs = cast(x.index_select(0, pad.gather), torch.float32).view(groups, pad.m, -1)
    h = torch.bmm(xs, w.shrink)
    if scale != 1.0:
        h.mul_(scale)
    h = cast(h, y.dtype)
    rows = (torch.zeros if w.partial else torch.empty)((y.shape[0], width), dtype=y.dtype, device=y.device)
    for j, (b, (first, size)) in enumerate(zip(w.expand, w.columns)):
        expanded = torch.empty((k + plan.has_base, size), dtype=y.dtype, device=y.device)
        torch.bmm(h[:, :, j * rank : (j + 1) * rank], b, out=expanded[:k].view(groups, pad.m, size))
        if plan.has_base:
            expanded[k].zero_()  # rows without adapter read this row
        torch.index_select(expanded, 0, plan.inv, out=rows[:, first : first + size])
    y[:, :width].add_(rows)


def _per_op(self, y, x, a_stacked, b_stacked, scale, slices, buffer, **kwargs) -> None:
    """vLLM's own add_lora_linear: shrink into float32 buffers, then expand (runs `.ops`)."""
    if buffer is None:
        r = b_stacked[0].size(-1)
        buffer = tuple(torch.zeros((x.size(0), r), dtype=torch.float32, device=x.device) for _ in slices)
    self.add_shrink(buffer, x, a_stacked, scale, **kwargs)
    self.add_expand(y, buffer, b_stacked, slices, add_inputs=True, **kwargs)


def add_lora_linear(
    self,
    y: torch.Tensor,
    x: torch.Tensor,
    lora_a_stacked: tuple[torch.Tensor, ...],
    lora_b_stacked: tuple[torch.Tensor, ...],
    scale: float,
    output_slices: tuple[int, ...],
    *,
    buffer: tuple[torch.Tensor, ...] | None = None,
    **kwargs: Any,
) -> None:
    """``y[:, slice i] += scale * x @ A_i[idx].T @ B_i[idx].T`` per row; idx < 0 rows untouched.

    Falls back to vLLM's way (per-slice shrink and expand through `.ops`) when a caller passes
    its own buffer, when the batch is better served per adapter (uneven groups), or on
    unexpected shapes.
    """
    assert len(lora_a_stacked) == len(lora_b_stacked) == len(output_slices)
    plan = batch_plan(self)
    x2, y2 = x.view(-1, x.shape[-1]), y.view(-1, y.shape[-1])
    if buffer is None and plan is None:
        return
    if buffer is not None or plan.n != x2.shape[0] or (plan.slot is None and plan.padded is None and not plan.runs):
        _per_op(self, y, x, lora_a_stacked, lora_b_stacked, scale, output_slices, buffer, **kwargs)
        return
    w = layer_weights(lora_a_stacked, lora_b_stacked, output_slices, plan.slots, y.dtype)
    if w is None:  # none of the batch's adapters targets this layer
        return
    if plan.slot is not None:
        _by_runs(y2, x2, w, scale, plan.slots, ((plan.slot, 0, plan.n),))
    elif plan.runs:
        _by_runs(y2, x2, w, scale, plan.slots, plan.runs)
    else:
        _mixed(y2, x2, w, scale, sum(output_slices), plan)
