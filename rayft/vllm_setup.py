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
