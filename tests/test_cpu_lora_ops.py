"""rayft's CPU LoRA plugin (serving/cpu_lora): correctness of the ops and of the fused
`PunicaWrapperCPU.add_lora_linear`, and registration.

vLLM's torch (CPU) LoRA ops index `weights[indices]` per token, so rows with adapter index -1
(base requests) pick the LAST adapter slot. The replacements must match a plain float64 reference
in which -1 rows get nothing (shrink: zeros, expand: output untouched), and vLLM's own results
on the other rows.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import pytest
import torch

pytest.importorskip("vllm")

import vllm.lora.ops.torch_ops.lora_ops as vllm_ops  # noqa: E402
import vllm.lora.punica_wrapper.punica_cpu as punica_cpu  # noqa: E402
from vllm.lora.layers.utils import LoRAMapping  # noqa: E402

from rayft.serving import cpu_lora  # noqa: E402
from rayft.serving.cpu_lora import linear, ops  # noqa: E402
from rayft.serving.cpu_lora.plan import make_plan  # noqa: E402
from rayft.serving.cpu_lora.plugin import PATCHED_METHODS, PATCHED_NAMES  # noqa: E402

# vLLM's add_lora_linear, kept before any test patches the class.
VLLM_ADD_LORA_LINEAR = punica_cpu.PunicaWrapperCPU.add_lora_linear

SLOTS, RANK, HIDDEN, OUT = 4, 8, 32, 48


@pytest.fixture(autouse=True)
def _restore_vllm_ops():
    """Every test starts and ends with vLLM's own ops in the CPU punica wrapper."""
    cpu_lora.unregister()
    yield
    cpu_lora.unregister()


def _indices(n: int, seed: int) -> torch.Tensor:
    """Random slot per row in [-1, SLOTS), with at least one -1 and the last slot present."""
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(-1, SLOTS, (n,), generator=g)
    idx[0], idx[-1] = -1, SLOTS - 1
    return idx


def _ref(x: torch.Tensor, w: torch.Tensor, idx: torch.Tensor) -> list[torch.Tensor | None]:
    """Per row, float64: x[i] @ W[idx[i]].T, or None when idx[i] == -1."""
    w = w.reshape(w.shape[0], w.shape[-2], w.shape[-1]).double()
    return [None if i < 0 else x[r].double() @ w[i].T for r, i in enumerate(idx.tolist())]


def _rand(*shape: int, dtype=torch.float32) -> torch.Tensor:
    return torch.randn(*shape).to(dtype)


def _segments(idx: torch.Tensor):
    """The sgmv prefill metadata vLLM derives from per-token indices (runs of equal indices)."""
    lora_idx, seq_len = torch.unique_consecutive(idx, return_counts=True)
    start = torch.cumsum(seq_len, 0) - seq_len
    return start, seq_len, lora_idx, lora_idx.numel(), int(seq_len.max()), int(seq_len.sum())


def _shrink(module, sgmv: bool, x, w, y, idx, scale):
    if sgmv:
        module.sgmv_shrink(x, w, y, *_segments(idx), scale)
    else:
        module.bgmv_shrink(x, w, y, idx, scale)


def _expand_slice(module, sgmv: bool, x, w, y, idx, offset, size, add):
    if sgmv:
        module.sgmv_expand_slice(x, w, y, *_segments(idx), offset, size, add)
    else:
        module.bgmv_expand_slice(x, w, y, idx, offset, size, add)


def _expand(module, sgmv: bool, x, w, y, idx, add):
    if sgmv:
        module.sgmv_expand(x, w, y, *_segments(idx), add)
    else:
        module.bgmv_expand(x, w, y, idx, add)


@pytest.mark.parametrize("sgmv", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_shrink_matches_reference(sgmv, seed):
    torch.manual_seed(seed)
    n, scale = 23, 0.5
    x, idx = _rand(n, HIDDEN, dtype=torch.bfloat16), _indices(n, seed)
    w = _rand(SLOTS, 1, RANK, HIDDEN, dtype=torch.bfloat16)
    y = torch.full((n, RANK + 2), 7.0)  # float32 buffer, wider than the rank
    _shrink(ops, sgmv, x, w, y, idx, scale)
    for r, ref in enumerate(_ref(x, w, idx)):
        expect = torch.zeros(RANK, dtype=torch.float64) if ref is None else scale * ref
        torch.testing.assert_close(y[r, :RANK].double(), expect, rtol=1e-4, atol=1e-4)
        assert torch.all(y[r, RANK:] == 7.0)  # columns past the rank untouched


@pytest.mark.parametrize("sgmv", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("add", [True, False], ids=["add", "set"])
@pytest.mark.parametrize("seed", [0, 1])
def test_expand_slice_matches_reference(sgmv, add, seed):
    torch.manual_seed(seed)
    n, offset = 19, 5
    x, w, idx = _rand(n, RANK), _rand(SLOTS, 1, OUT, RANK), _indices(n, seed)
    y0 = _rand(n, OUT + 11)
    y = y0.clone()
    _expand_slice(ops, sgmv, x, w, y, idx, offset, OUT, add)
    for r, ref in enumerate(_ref(x, w, idx)):
        expect = y0[r].double().clone()
        if ref is not None:
            base = expect[offset : offset + OUT] if add else 0.0
            expect[offset : offset + OUT] = base + ref
        torch.testing.assert_close(y[r].double(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("sgmv", [False, True], ids=["bgmv", "sgmv"])
@pytest.mark.parametrize("add", [True, False], ids=["add", "set"])
@pytest.mark.parametrize("out_width", [OUT - 6, OUT + 6], ids=["narrow", "wide"])
def test_expand_matches_reference(sgmv, add, out_width):
    torch.manual_seed(3)
    n = 17
    x, w, idx = _rand(n, RANK), _rand(SLOTS, OUT, RANK), _indices(n, 3)  # 3-D weights too
    y0 = _rand(n, out_width)
    y = y0.clone()
    _expand(ops, sgmv, x, w, y, idx, add)
    common = min(OUT, out_width)
    for r, ref in enumerate(_ref(x, w, idx)):
        expect = y0[r].double().clone()
        if ref is not None:
            expect[:common] = (expect[:common] if add else 0.0) + ref[:common]
        torch.testing.assert_close(y[r].double(), expect, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("slot", [-1, 0, SLOTS - 1])
def test_uniform_batches(slot):
    """All rows on one slot (the no-gather fast path), including all rows without adapter."""
    x, a, b = _rand(6, HIDDEN), _rand(SLOTS, 1, RANK, HIDDEN), _rand(SLOTS, 1, OUT, RANK)
    idx = torch.full((6,), slot)
    buf, y0 = torch.full((6, RANK + 2), 3.0), _rand(6, OUT)  # buffer wider than the rank
    y = y0.clone()
    ops.bgmv_shrink(x, a, buf, idx, 2.0)
    ops.bgmv_expand_slice(buf[:, :RANK], b, y, idx, 0, OUT, True)
    assert torch.all(buf[:, RANK:] == 3.0)
    if slot < 0:
        assert torch.all(buf[:, :RANK] == 0) and torch.equal(y, y0)
    else:
        ref = 2.0 * x.double() @ a[slot, 0].double().T
        torch.testing.assert_close(buf[:, :RANK].double(), ref, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(y.double(), y0.double() + ref @ b[slot, 0].double().T, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("rows", [(1, 5), (7, 5)], ids=["broadcast", "truncate"])
def test_expand_row_rules_match_vllm(rows):
    """vLLM's expand broadcasts a single input row and ignores input rows beyond the output's."""
    n_in, n_out = rows
    x, w = _rand(n_in, RANK), _rand(SLOTS, 1, OUT, RANK)
    idx = torch.full((n_in,), 2) if n_in == 1 else torch.tensor([1, 2, 2, 0, 1, 3, 3])
    y0 = _rand(n_out, OUT)
    ours, theirs = y0.clone(), y0.clone()
    ops.bgmv_expand(x, w, ours, idx, True)
    vllm_ops.bgmv_expand(x, w, theirs, idx, True)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-5)


def test_valid_rows_match_vllm_and_vllm_is_wrong_on_base_rows():
    """Same numbers as vLLM's op on adapter rows; vLLM applies the last slot to -1 rows."""
    torch.manual_seed(4)
    n = 16
    x, w, idx = _rand(n, RANK), _rand(SLOTS, 1, OUT, RANK), _indices(n, 4)
    y0 = _rand(n, OUT)
    ours, theirs = y0.clone(), y0.clone()
    ops.bgmv_expand_slice(x, w, ours, idx, 0, OUT, True)
    vllm_ops.bgmv_expand_slice(x, w, theirs, idx, 0, OUT, True)
    valid, base = idx >= 0, idx < 0
    torch.testing.assert_close(ours[valid], theirs[valid], rtol=1e-5, atol=1e-5)
    assert torch.equal(ours[base], y0[base])
    # The upstream bug (vllm-project/vllm#48421): -1 rows got x @ W[-1].T added. If this
    # ever fails after a vLLM upgrade, the upstream fix landed and the plugin can go.
    torch.testing.assert_close(theirs[base], y0[base] + x[base] @ w[-1, 0].T)


def test_entry_point_is_declared():
    (ep,) = [e for e in entry_points(group="vllm.general_plugins") if e.name == "rayft_cpu_lora"]
    assert ep.load() is cpu_lora.register


def _wrapper_mixed_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Run PunicaWrapperCPU.add_lora_linear on a decode batch mixing base and adapter rows.

    Returns (output, base-only output); rows 0 and 2 are base requests (lora id 0 -> index -1).
    """
    wrapper = punica_cpu.PunicaWrapperCPU(64, 8, device="cpu")
    mapping = LoRAMapping(index_mapping=(0, 1, 0, 2), prompt_mapping=(0, 1, 0, 2), is_prefill=False)
    wrapper.update_metadata(mapping, [1, 2], 2, 100)  # slot 0 = lora id 1, slot 1 = lora id 2
    torch.manual_seed(5)
    x = _rand(4, HIDDEN)
    a, b = (_rand(2, 1, RANK, HIDDEN),), (_rand(2, 1, OUT, RANK),)
    base = _rand(4, OUT)
    y = base.clone()
    wrapper.add_lora_linear(y, x, a, b, 1.0, (OUT,))
    return y, base


def test_register_swaps_the_functions_the_cpu_wrapper_calls():
    y_vllm, base = _wrapper_mixed_batch()
    assert not torch.equal(y_vllm[[0, 2]], base[[0, 2]])  # the bug, through the wrapper
    cpu_lora.register()
    cpu_lora.register()  # idempotent
    for name in PATCHED_NAMES:
        assert getattr(punica_cpu, name) is getattr(ops, name)
    for name in PATCHED_METHODS:
        assert getattr(punica_cpu.PunicaWrapperCPU, name) is getattr(linear, name)
    assert cpu_lora.is_patched()
    y, base = _wrapper_mixed_batch()
    assert torch.equal(y[[0, 2]], base[[0, 2]])  # base rows untouched
    torch.testing.assert_close(y[[1, 3]], y_vllm[[1, 3]], rtol=1e-5, atol=1e-5)
    cpu_lora.unregister()
    assert punica_cpu.bgmv_shrink is vllm_ops.bgmv_shrink
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is VLLM_ADD_LORA_LINEAR


def test_lora_on_a_layer_whose_weight_the_int8_kernel_took_over_is_placed_on_the_cpu():
    """vLLM's CPU int8 kernel sets `layer.weight = None` after prepacking; vLLM's own lookup then
    fails on None.device (vllm#57480) and no engine with a W8A8 base and LoRA starts. Fails with
    vLLM's function; the plugin's answers every layer."""
    import vllm.lora.layers.base_linear as base_linear
    import vllm.lora.layers.utils as lora_utils

    from rayft.serving.cpu_lora.lora_device import lora_device

    prepacked, packed = torch.nn.Module(), torch.nn.Module()
    prepacked.weight = None
    packed.weight_packed = torch.nn.Parameter(torch.zeros(2, 2, dtype=torch.int32), requires_grad=False)
    with pytest.raises(AttributeError):
        lora_utils._get_lora_device(prepacked)
    cpu_lora.register()
    assert base_linear._get_lora_device is lora_device and lora_utils._get_lora_device is lora_device
    assert lora_device(prepacked) == torch.device("cpu") and lora_device(packed) == torch.device("cpu")
    assert lora_device(torch.nn.Linear(2, 2)) == torch.device("cpu")
    with pytest.raises(ValueError, match="Unsupported base layer"):  # anything else: vLLM's own answer
        lora_device(torch.nn.Module())
    cpu_lora.unregister()


@pytest.mark.parametrize("value", ["0", "false"])
def test_env_var_switches_it_off(monkeypatch, value):
    monkeypatch.setenv(cpu_lora.ENV_VAR, value)
    cpu_lora.register()
    assert not cpu_lora.is_patched()
    for name in PATCHED_NAMES:
        assert getattr(punica_cpu, name) is getattr(vllm_ops, name)
    assert punica_cpu.PunicaWrapperCPU.add_lora_linear is VLLM_ADD_LORA_LINEAR


def test_inert_off_cpu(monkeypatch):
    from vllm.platforms import current_platform

    monkeypatch.setattr(current_platform, "is_cpu", lambda: False)
    cpu_lora.register()
    assert not cpu_lora.is_patched()


# --- the fused PunicaWrapperCPU.add_lora_linear, against a float64 reference ---------------

MAPPINGS = {
    # lora ids per token (0 = no adapter); slots: lora id k -> slot k - 1
    "one": [2] * 12,
    "balanced": [1, 2, 3, 4] * 3,  # equal groups: one batched matmul
    "with_base": [0, 3, 1, 0, 3, 1, 0, 3, 1, 4, 4, 4],
    "uneven": [1] * 10 + [2, 4, 0],  # padding would waste too much: per-adapter matmuls
    "gaps": [1, 3, 0, 1, 3, 3],  # slots 0 and 2 present: weights picked, not sliced
    "runs": [1] * 20 + [3] * 20 + [0] * 8 + [2] * 16,  # long runs (prefill's sequences): run by run
    "none": [0] * 5,
}


def _linear_weights(slices, dtype=torch.float32):
    """Random stacked shrink and expand weights of a layer with `slices` outputs."""
    a = tuple(_rand(SLOTS, 1, RANK, HIDDEN, dtype=dtype) for _ in slices)
    b = tuple(_rand(SLOTS, 1, size, RANK, dtype=dtype) for size in slices)
    return a, b


def _linear_reference(y0, x, a, b, ids: list[int], scale: float, slices) -> torch.Tensor:
    """float64: `y0` plus, per row with an adapter (lora id k > 0: slot k - 1), every slice's LoRA."""
    ref, offset = y0.double(), 0
    for ai, bi, size in zip(a, b, slices):
        for row, lora_id in enumerate(ids):
            if lora_id > 0:
                h = scale * x[row].double() @ ai[lora_id - 1, 0].double().T
                ref[row, offset : offset + size] += h @ bi[lora_id - 1, 0].double().T
        offset += size
    return ref


def _linear_case(ids: list[int], prefill: bool, scale: float, zero_slots=(), dtype=torch.float32):
    """Run the patched add_lora_linear with 3 output slices; return (y, float64 reference).

    `zero_slots` are zeroed in the middle slice's weights (adapters not targeting it).
    """
    wrapper = punica_cpu.PunicaWrapperCPU(64, 16, device="cpu")
    mapping = LoRAMapping(ids, ids, is_prefill=prefill)
    wrapper.update_metadata(mapping, [1, 2, 3, 4], SLOTS, 100)
    torch.manual_seed(len(ids))
    slices = (OUT, 16, 8)
    a, b = _linear_weights(slices, dtype)
    for slot in zero_slots:
        a[1][slot], b[1][slot] = 0, 0
    x, y0 = _rand(len(ids), HIDDEN, dtype=dtype), _rand(len(ids), sum(slices) + 3, dtype=dtype)
    y = y0.clone()
    wrapper.add_lora_linear(y, x, a, b, scale, slices)
    return y, _linear_reference(y0, x, a, b, ids, scale, slices)


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
@pytest.mark.parametrize("case", sorted(MAPPINGS))
def test_fused_add_lora_linear_matches_reference(case, prefill):
    cpu_lora.register()
    y, ref = _linear_case(MAPPINGS[case], prefill, scale=0.5)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case,zero_slots", [("one", (1,)), ("balanced", (1,)), ("balanced", (0, 1, 2, 3))])
def test_fused_add_lora_linear_with_all_zero_slots(case, zero_slots):
    cpu_lora.register()
    y, ref = _linear_case(MAPPINGS[case], False, scale=1.0, zero_slots=zero_slots)
    torch.testing.assert_close(y.double(), ref, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("case", ["one", "with_base", "uneven"])
def test_fused_add_lora_linear_bfloat16(case):
    """bf16 model: shrink in float32 (vLLM's buffer), expand in bf16, like vLLM's path."""
    y_vllm, ref = _linear_case(MAPPINGS[case], True, scale=0.5, dtype=torch.bfloat16)
    cpu_lora.register()
    y, _ = _linear_case(MAPPINGS[case], True, scale=0.5, dtype=torch.bfloat16)
    torch.testing.assert_close(y.double(), ref, rtol=0.02, atol=0.1)
    rows = [i for i, lora_id in enumerate(MAPPINGS[case]) if lora_id > 0]
    torch.testing.assert_close(y[rows].double(), y_vllm[rows].double(), rtol=0.02, atol=0.1)


@pytest.mark.parametrize("prefill", [False, True], ids=["decode", "prefill"])
def test_fused_add_lora_linear_follows_new_metadata_and_weight_writes(prefill):
    """What is kept between calls (the batch's grouping on the wrapper, each layer's weight
    layout) is used within a step and dropped when vLLM writes the metadata or a weight."""
    cpu_lora.register()
    wrapper = punica_cpu.PunicaWrapperCPU(64, 16, device="cpu")
    slices = (OUT, 16, 8)
    a, b = _linear_weights(slices)
    a[1][2], b[1][2] = 0, 0  # slot 2 (lora id 3) does not target the middle slice
    x, y0 = _rand(12, HIDDEN), _rand(12, sum(slices))

    def step(ids: list[int]) -> None:
        wrapper.update_metadata(LoRAMapping(ids, ids, is_prefill=prefill), [1, 2, 3, 4], SLOTS, 100)
        for _ in range(2):  # two layers of one step: the grouping is kept, not recomputed
            y = y0.clone()
            wrapper.add_lora_linear(y, x, a, b, 0.5, slices)
            torch.testing.assert_close(
                y.double(), _linear_reference(y0, x, a, b, ids, 0.5, slices), rtol=1e-5, atol=1e-4
            )
        assert linear.batch_plan(wrapper) is linear.batch_plan(wrapper)

    step(MAPPINGS["balanced"])
    step([3, 0, 1, 4] * 3)  # same length and adapters, rows moved: a new grouping
    a[1][2].normal_(), b[1][2].normal_()  # vLLM loads an adapter into the slot, in place
    step([3, 0, 1, 4] * 3)


def test_plan_paths():
    """The mappings above cover each way of grouping rows."""
    plan = lambda ids: make_plan(torch.tensor([i - 1 for i in ids]))  # noqa: E731
    assert plan(MAPPINGS["one"]).slot == 1
    assert plan(MAPPINGS["none"]).slot == -1
    assert plan(MAPPINGS["balanced"]).padded.slot_range == (0, 4)
    assert plan(MAPPINGS["with_base"]).has_base and plan(MAPPINGS["with_base"]).padded
    assert plan(MAPPINGS["uneven"]).padded is None
    assert plan(MAPPINGS["gaps"]).padded.slot_range is None
    assert plan(MAPPINGS["runs"]).runs == ((0, 0, 20), (2, 20, 40), (1, 48, 64))
    assert all(plan(MAPPINGS[case]).runs is None for case in ("balanced", "with_base", "uneven", "gaps"))


def test_all_zero_adapter_slots_are_skipped_and_rechecked_after_writes():
    """A slot of zeros (adapter not targeting the module) adds nothing; refilled, it counts."""
    x, idx = _rand(6, HIDDEN), torch.tensor([2, -1, 2, 2, -1, 2])
    a, b = _rand(SLOTS, 1, RANK, HIDDEN), _rand(SLOTS, 1, OUT, RANK)
    a[2], b[2] = 0, 0
    buf, y0 = torch.full((6, RANK), 5.0), _rand(6, OUT)
    y = y0.clone()
    ops.bgmv_shrink(x, a, buf, idx, 1.0)
    ops.bgmv_expand_slice(buf, b, y, idx, 0, OUT, True)
    assert torch.all(buf == 0) and torch.equal(y, y0)
    a[2].normal_(), b[2].normal_()  # in-place writes, as vLLM loads an adapter into the slot
    ops.bgmv_shrink(x, a, buf, idx, 1.0)
    ops.bgmv_expand_slice(buf, b, y, idx, 0, OUT, True)
    h = x.double() @ a[2, 0].double().T
    torch.testing.assert_close(buf.double()[idx == 2], h[idx == 2], rtol=1e-5, atol=1e-5)
    assert not torch.equal(y[idx == 2], y0[idx == 2]) and torch.equal(y[idx < 0], y0[idx < 0])
