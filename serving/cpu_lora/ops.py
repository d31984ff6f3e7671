"""Grouped replacements for vLLM's PyTorch-native (CPU) LoRA ops.

vLLM 0.32's `vllm.lora.ops.torch_ops` gathers one full LoRA matrix per token
(`weights[indices]`, a ``[tokens, out, in]`` copy) and einsums over it. That is
slow, and wrong for rows whose adapter index is -1 (no adapter): Python-style
negative indexing picks the LAST adapter slot, so base requests batched with
adapter requests silently get that adapter applied.

These functions keep the originals' signatures and semantics for valid indices
(scaling, ``add_inputs``, slice offsets, the expand op's padding/broadcast rules,
computing in the output tensor's dtype) but:

* group the rows by adapter slot (once per batch, see `.plan`) and run one matmul per
  adapter present: a plain matmul with no gather at all when every row uses the same
  slot, else one batched matmul over the adapters present (groups padded to equal size),
  or a matmul per adapter when padding would waste too much (uneven prefill segments);
  weights are only ever sliced per adapter, never gathered per token;
* skip rows with a negative index: shrink writes zeros there, expand leaves them
  untouched (as vLLM's Triton kernels do on GPU);
* skip the work when every adapter in the batch is all zero in these weights (an adapter
  that does not target the module), see `.zero_slots`.
"""

from __future__ import annotations

import torch

from .plan import Plan, plan_for_segments, plan_for_tokens
from .zero_slots import any_nonzero

__all__ = [
    "bgmv_expand",
    "bgmv_expand_slice",
    "bgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
    "sgmv_shrink",
]


def stacked(weights: torch.Tensor, cols: int | None = None) -> torch.Tensor:
    """LoRA weights as ``[slots, out, in]`` (vLLM stacks them as ``[slots, 1, out, in]``)."""
    w3 = weights.flatten(0, 1) if weights.dim() == 4 else weights
    return w3 if cols is None else w3[:, :cols]


def cast(t: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """`t` in `dtype` (no copy when it already is)."""
    return t if t.dtype == dtype else t.to(dtype)


def _mm_per_slot(inputs, w3: torch.Tensor, plan: Plan, y: torch.Tensor) -> None:
    """Into `y`: results for `plan.rows` (in that order), one matmul per slot on its rows."""
    x = cast(inputs.index_select(0, plan.rows), y.dtype)
    for slot, start, end in plan.groups:
        torch.mm(x[start:end], cast(w3[slot], y.dtype).T, out=y[start:end])


def present_weights(w3: torch.Tensor, plan: Plan, dtype: torch.dtype) -> torch.Tensor:
    """``[groups, in, out]``: the (transposed) weights of the slots in the batch, in group order."""
    pad = plan.padded
    w = w3[slice(*pad.slot_range)] if pad.slot_range else w3.index_select(0, pad.slots)
    return cast(w, dtype).transpose(1, 2)


def _bmm_padded(inputs, w3: torch.Tensor, plan: Plan, y: torch.Tensor) -> None:
    """Into `y`: all groups in one batched matmul, each padded to `m` rows."""
    pad, groups = plan.padded, len(plan.groups)
    x = cast(inputs.index_select(0, pad.gather), y.dtype).view(groups, pad.m, -1)
    torch.bmm(x, present_weights(w3, plan, y.dtype), out=y.view(groups, pad.m, -1))


def _lora_rows(inputs, weights, plan: Plan, dtype: torch.dtype, cols=None, out=None):
    """``[n, out]``: row i is ``inputs[i] @ W[idx[i]].T``, zero where idx[i] < 0 (mixed batch).

    Written into `out` when given (it must be contiguous).
    """
    w3 = stacked(weights, cols)
    k = plan.padded.gather.numel() if plan.padded is not None else plan.rows.numel()
    y = torch.empty((k + plan.has_base, w3.shape[1]), dtype=dtype, device=inputs.device)
    if plan.padded is not None:
        _bmm_padded(inputs, w3, plan, y[:k])
    else:
        _mm_per_slot(inputs, w3, plan, y[:k])
    if plan.has_base:
        y[k].zero_()  # where rows without adapter read from
    return torch.index_select(y, 0, plan.inv, out=out)


def _shrink(plan: Plan, inputs, weights, output_tensor, scaling: float) -> None:
    """``output[:, :r] = scaling * inputs @ A[idx].T`` per row; rows with idx < 0 get zeros."""
    dtype = output_tensor.dtype
    out = output_tensor[:, : weights.shape[-2]]
    if not plan.slots or not any_nonzero(weights, plan.slots):  # no adapter, or all-zero ones
        out.zero_()
        return
    if plan.slot is not None:
        torch.mm(cast(inputs, dtype), cast(stacked(weights)[plan.slot], dtype).T, out=out)
    elif out.is_contiguous():
        _lora_rows(inputs, weights, plan, dtype, out=out)
    else:
        out.copy_(_lora_rows(inputs, weights, plan, dtype))
    if scaling != 1.0:
        out.mul_(scaling)


def _expand(plan: Plan, inputs, weights, out, add: bool, cols: int | None = None) -> None:
    """``out (+)= inputs @ B[idx].T`` per row (first `cols` outputs); idx < 0 rows untouched."""
    dtype = out.dtype
    if not plan.slots or not any_nonzero(weights, plan.slots):  # no adapter, or all-zero ones
        return
    if plan.slot is None:
        y = _lora_rows(inputs, weights, plan, dtype, cols)
        if add:
            out.add_(y)
        else:
            out.index_copy_(0, plan.rows, y.index_select(0, plan.rows))
        return
    x, w_t = cast(inputs, dtype), cast(stacked(weights, cols)[plan.slot], dtype).T
    if x.shape[0] != out.shape[0] and add:  # one input row broadcast over all outputs
        out.add_(x @ w_t)
    elif x.shape[0] != out.shape[0]:
        out.copy_(x @ w_t)
    elif add:
        out.addmm_(x, w_t)
    else:
        torch.mm(x, w_t, out=out)


def bgmv_shrink(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    scaling: float = 1.0,
) -> None:
    """``output[:, :r] = scaling * inputs @ A[idx].T`` per row; rows with idx < 0 get zeros."""
    plan = plan_for_tokens(lora_indices_tensor)
    _shrink(plan, inputs, lora_b_weights, output_tensor, scaling)


def bgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    add_inputs: bool = True,
) -> None:
    """``output[:, :c] (+)= inputs @ B[idx].T`` per row; rows with idx < 0 are left untouched.

    As in vLLM: ``c`` is the smaller of the two widths (adapter and model may pad differently),
    extra input rows beyond the output's are ignored, and a single input row is broadcast.
    """
    n = output_tensor.shape[0]
    if not (inputs.shape[0] == 1 and n != 1):
        inputs, lora_indices_tensor = inputs[:n], lora_indices_tensor[:n]
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    plan = plan_for_tokens(lora_indices_tensor)
    _expand(plan, inputs, lora_b_weights, output_tensor[:, :common], add_inputs, common)


def bgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = True,
) -> None:
    """``output[:, off:off+size] (+)= inputs @ B[idx].T`` per row; idx < 0 rows untouched."""
    out = output_tensor[:, slice_offset : slice_offset + slice_size]
    _expand(plan_for_tokens(lora_indices_tensor), inputs, lora_b_weights, out, add_inputs)


def sgmv_shrink(
    inputs: torch.Tensor,
    lora_a_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    scaling: float,
) -> None:
    """Prefill shrink: one adapter index per segment of `seq_len_tensor` tokens."""
    plan = plan_for_segments(lora_indices_tensor, seq_len_tensor)
    _shrink(plan, inputs, lora_a_weights, output_tensor, scaling)


def sgmv_expand(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    add_inputs: bool = False,
) -> None:
    """Prefill expand: `bgmv_expand` with one adapter index per segment."""
    if not inputs.shape[0] == output_tensor.shape[0] == token_nums:  # vLLM's row rules apply
        indices = torch.repeat_interleave(lora_indices_tensor, seq_len_tensor)
        bgmv_expand(inputs, lora_b_weights, output_tensor, indices, add_inputs)
        return
    common = min(lora_b_weights.shape[-2], output_tensor.shape[1])
    plan = plan_for_segments(lora_indices_tensor, seq_len_tensor)
    _expand(plan, inputs, lora_b_weights, output_tensor[:, :common], add_inputs, common)


def sgmv_expand_slice(
    inputs: torch.Tensor,
    lora_b_weights: torch.Tensor,
    output_tensor: torch.Tensor,
    b_seq_start_loc: torch.Tensor,
    seq_len_tensor: torch.Tensor,
    lora_indices_tensor: torch.Tensor,
    batches: int,
    max_seq_length: int,
    token_nums: int,
    slice_offset: int,
    slice_size: int,
    add_inputs: bool = False,
) -> None:
    """Prefill expand into a column slice, one adapter index per segment."""
    out = output_tensor[:, slice_offset : slice_offset + slice_size]
    plan = plan_for_segments(lora_indices_tensor, seq_len_tensor)
    _expand(plan, inputs, lora_b_weights, out, add_inputs)
