"""How rayft runs vLLM, the same in eval and serving: the process environment, the device's dtype,
and the LoRA ranks an engine can be built for. A leaf module: it imports no stage (and not vLLM)."""

from __future__ import annotations

import os

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


def engine_dtype() -> str:
    return "float32" if on_cpu() else "auto"


def supported_lora_rank(rank: int) -> int:
    """The smallest max_lora_rank vLLM accepts that fits `rank`."""
    for allowed in LORA_RANKS:
        if rank <= allowed:
            return allowed
    raise ValueError(f"LoRA rank {rank} is above vLLM's largest supported rank ({LORA_RANKS[-1]})")
