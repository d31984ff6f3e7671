"""How rayft runs vLLM, the same in eval and serving: the process environment, the device's dtype,
and the LoRA ranks an engine can be built for. A leaf module: it imports no stage (and not vLLM)."""

from __future__ import annotations

import json
import os
from pathlib import Path

# In-process engine core (no extra worker process: faster start, ~0.6 GiB less memory), and the CPU
# build's KV cache size in GiB.
VLLM_ENV = {
    "VLLM_ENABLE_V1_MULTIPROCESSING": "0",
    "VLLM_CPU_KVCACHE_SPACE": os.environ.get("VLLM_CPU_KVCACHE_SPACE", "1"),
}
# The max_lora_rank values vLLM accepts.
LORA_RANKS = (8, 16, 32, 64, 128, 256, 320, 512)


def on_cpu() -> bool:
    """No CUDA device: vLLM's CPU build, in float32 and eager mode."""
    import torch

    return not torch.cuda.is_available()


def quantization_scheme(model: str | Path) -> str | None:
    """The quantization scheme of a model folder's weights, read from its config.json: "w8a8" or
    "w4a16" for compressed-tensors (`rayft quantize` writes those), the method's name for another
    quantized checkpoint (e.g. "awq"), None for full precision or a hub id."""
    config_path = Path(model) / "config.json"
    if not config_path.is_file():
        return None
    quantization = json.loads(config_path.read_text()).get("quantization_config")
    if not quantization:
        return None
    groups = list((quantization.get("config_groups") or {}).values())
    if not groups:
        return str(quantization.get("quant_method", "quantized"))
    weights, activations = groups[0].get("weights") or {}, groups[0].get("input_activations") or {}
    return f"w{weights.get('num_bits', 16)}a{activations.get('num_bits', 16)}"


def engine_dtype(model: str | Path | None = None) -> str:
    """The dtype vLLM runs `model` in. On CPU float32, except a quantized model: vLLM's CPU int8
    (AMX) and int4 kernels take bfloat16 activations only."""
    if not on_cpu():
        return "auto"
    return "bfloat16" if model is not None and quantization_scheme(model) else "float32"


def supported_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that fits `rank`."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest supported rank ({LORA_RANKS[-1]})")


def fork_engine_core() -> None:
    """Make vLLM fork its engine-core process rather than spawn it. vLLM's CPU platform always
    spawns it, and the new interpreter imports torch and vLLM all over again: about 5 of the 8 s an
    engine takes to build on a 2-core machine (bench/RESULTS.md). An engine replica has imported
    both already, so a fork starts the core with them loaded. A fork is safe only while this process
    has run no parallel torch operation (after one, OpenMP's threads are gone in the child and its
    first parallel step hangs): call this before the engine is built, and run no tensor operation
    before that. The core never calls Ray, and a forked child leaves by `os._exit`, skipping the
    actor's exit hooks. CPU only: on a GPU vLLM's own choice stands."""
    import multiprocessing

    import vllm.v1.engine.utils as engine_utils

    engine_utils.get_mp_context = lambda: multiprocessing.get_context("fork")
