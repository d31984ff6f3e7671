"""vLLM plugin replacing the CPU LoRA ops (mixed base/adapter batch bug, per-token weight gather).

Loaded by vLLM through the ``vllm.general_plugins`` entry point ``rayft_cpu_lora`` (see
pyproject.toml); inert on non-CPU platforms and when ``RAYFT_CPU_LORA_OPS=0``.
See docs/cpu-lora.md. Drop it once vLLM's torch ops are fixed upstream (vllm-project/vllm#48421).
"""

from .plugin import ENV_VAR, is_patched, register, unregister

__all__ = ["ENV_VAR", "is_patched", "register", "unregister"]
