"""LoRA on a quantized base on CPUs without AMX: where vLLM's LoRA layers put their tensors.

vLLM's LoRA layer asks its base layer for a device through `_get_lora_device`, which reads
`base_layer.weight` first. On a CPU without AMX, vLLM's int8 (oneDNN) kernel prepacks the weight
and sets `layer.weight = None`, so that read fails with `'NoneType' object has no attribute
'device'` and an engine with a W8A8 base and LoRA never starts (upstream vllm-project/vllm#57480).
This version skips attributes that hold no tensor, and answers the CPU for a layer whose weight
the kernel took over. Bases vLLM already handles are answered as before. The same happens on a CPU
with AMX for layers too small for its kernel (the tiny test model's).
"""

from __future__ import annotations

import importlib

TENSOR_ATTRIBUTES = ("weight", "weight_packed", "qweight")  # full, compressed-tensors, GPTQ/AWQ
# Modules that bound vLLM's function by name at import.
USERS = ("vllm.lora.layers.utils", "vllm.lora.layers.base_linear")


def lora_device(base_layer):
    """The device of the first tensor among the layer's weights; vLLM's own answer for other layers;
    the CPU for a layer whose weight a CPU kernel took over (installed on the CPU platform only)."""
    import torch

    for name in TENSOR_ATTRIBUTES:
        tensor = getattr(base_layer, name, None)
        if isinstance(tensor, torch.Tensor):
            return tensor.device
    try:
        return vllm_lora_device(base_layer)
    except AttributeError:  # `weight` is None: prepacked by the CPU int8 kernel
        return torch.device("cpu")


def vllm_lora_device(base_layer):
    from vllm.lora.layers import utils

    return getattr(utils, "_rayft_original_get_lora_device", utils._get_lora_device)(base_layer)


def install() -> bool:
    """Route vLLM's LoRA layers through `lora_device`; False, changing nothing, when vLLM no longer
    has the function this replaces. Idempotent."""
    modules = [importlib.import_module(name) for name in USERS]
    if not all(hasattr(module, "_get_lora_device") for module in modules):
        return False
    utils = modules[0]
    if not hasattr(utils, "_rayft_original_get_lora_device"):
        utils._rayft_original_get_lora_device = utils._get_lora_device
    for module in modules:
        module._get_lora_device = lora_device
    return True


def uninstall() -> None:
    """Put vLLM's function back."""
    from vllm.lora.layers import utils

    original = getattr(utils, "_rayft_original_get_lora_device", None)
    if original is not None:
        for name in USERS:
            importlib.import_module(name)._get_lora_device = original
