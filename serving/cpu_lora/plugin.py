"""Swap what vLLM's CPU punica wrapper calls for the grouped versions in `.ops` and `.linear`.

`vllm.lora.punica_wrapper.punica_cpu` does ``from vllm.lora.ops.torch_ops import bgmv_shrink, ...``
at import, so those six names are globals of that module, looked up each time a
`PunicaWrapperCPU` method runs. Rebinding them there changes what every CPU wrapper (existing or
future) calls, and touches nothing else: not `vllm.lora.ops.torch_ops` itself, not other
platforms' wrappers. The wrapper's `add_lora_linear` method is replaced on the class as well
(fused shrink+expand for column-parallel layers; it falls back to vLLM's method, hence to the
replaced ops, when it does not apply). vLLM runs CPU models with LoRA eagerly (its CPU platform
sets compilation mode NONE when LoRA is on), so no compiled graph keeps the old functions.

It also makes LoRA work on a quantized base on CPU (`lora_device.py`: vLLM's int8 kernel leaves
the layer's `weight` None, and vLLM's LoRA layer read its device from it).

vLLM calls `register()` through the ``vllm.general_plugins`` entry point in every process that
builds an engine (process 0 while creating the engine config, the engine core, each worker),
before any model is loaded.
"""

from __future__ import annotations

import logging
import os
import sys

ENV_VAR = "RAYFT_CPU_LORA_OPS"
TARGET_MODULE = "vllm.lora.punica_wrapper.punica_cpu"
PATCHED_NAMES = (
    "bgmv_shrink",
    "bgmv_expand",
    "bgmv_expand_slice",
    "sgmv_shrink",
    "sgmv_expand",
    "sgmv_expand_slice",
)
PATCHED_METHODS = ("add_lora_linear",)  # of PunicaWrapperCPU
# Where what we replace comes from; anything else there means vLLM changed: hands off.
_OPS_ORIGIN = "vllm.lora.ops.torch_ops.lora_ops"

# A child of vLLM's logger, so the line shows up with vLLM's own log configuration.
logger = logging.getLogger("vllm.plugins.rayft_cpu_lora")

_originals: dict[tuple[object, str], object] = {}
_logged: set[str] = set()


def _log_once(message: str, *args: object, level: int = logging.INFO) -> None:
    """Log `message` once per process (register() may be called more than once).

    In the front-end process vLLM loads plugins (EngineArgs.__post_init__) before it configures
    its loggers, so with no handler in reach the line goes to stderr directly, honouring
    VLLM_CONFIGURE_LOGGING and VLLM_LOGGING_LEVEL.
    """
    if message in _logged:
        return
    _logged.add(message)
    if logger.hasHandlers():
        logger.log(level, message, *args)
    elif os.environ.get("VLLM_CONFIGURE_LOGGING", "1") != "0" and level >= logging.getLevelName(
        os.environ.get("VLLM_LOGGING_LEVEL", "INFO").upper()
    ):
        print(f"{logging.getLevelName(level)} [rayft_cpu_lora] {message % args}", file=sys.stderr)


def enabled_by_env() -> bool:
    """False when ``RAYFT_CPU_LORA_OPS`` is set to 0/false/no/off."""
    return os.environ.get(ENV_VAR, "1").strip().lower() not in ("0", "false", "no", "off")


def _targets() -> list[tuple[object, str, object, str]]:
    """(owner, attribute, replacement, module vLLM's original comes from) for each swap."""
    import importlib

    from . import linear, ops

    module = importlib.import_module(TARGET_MODULE)
    wrapper = module.PunicaWrapperCPU
    return [(module, name, getattr(ops, name), _OPS_ORIGIN) for name in PATCHED_NAMES] + [
        (wrapper, name, getattr(linear, name), TARGET_MODULE) for name in PATCHED_METHODS
    ]


def is_patched() -> bool:
    """Whether the CPU punica wrapper currently calls rayft's versions."""
    return all(getattr(owner, name, None) is new for owner, name, new, _ in _targets())


def register() -> None:
    """vLLM general-plugin entry point: install the grouped CPU LoRA ops. Idempotent.

    Does nothing when ``RAYFT_CPU_LORA_OPS=0``, when vLLM's platform is not CPU, or when the
    wrapper module no longer looks like the one these ops were written for.
    """
    if not enabled_by_env():
        _log_once("rayft CPU LoRA ops: inactive (%s=0), using vLLM's own ops.", ENV_VAR)
        return
    from vllm.platforms import current_platform

    if not current_platform.is_cpu():
        _log_once("rayft CPU LoRA ops: inactive (platform is not CPU).")
        return
    from . import lora_device

    if not lora_device.install():
        _log_once(
            "rayft CPU LoRA: vLLM has no _get_lora_device; LoRA on an int8 base needs AMX.", level=logging.WARNING
        )
    targets = _targets()
    foreign = [
        name
        for owner, name, new, origin in targets
        if getattr(owner, name, None) is not new and getattr(getattr(owner, name, None), "__module__", None) != origin
    ]
    if foreign:
        _log_once(
            "rayft CPU LoRA ops: inactive, %s not vLLM's own as expected (%s).",
            ",".join(foreign),
            TARGET_MODULE,
            level=logging.WARNING,
        )
        return
    for owner, name, new, _ in targets:
        if getattr(owner, name) is not new:
            _originals[(owner, name)] = getattr(owner, name)
            setattr(owner, name, new)
    _log_once(
        "rayft CPU LoRA ops: active, grouped per-adapter ops replace %s and "
        "PunicaWrapperCPU.%s in %s (%s=0 to disable).",
        ",".join(PATCHED_NAMES),
        ",".join(PATCHED_METHODS),
        TARGET_MODULE,
        ENV_VAR,
    )


def unregister() -> None:
    """Put vLLM's original ops back (for tests, or to switch off in a running process)."""
    from . import lora_device

    for (owner, name), original in _originals.items():
        setattr(owner, name, original)
    _originals.clear()
    lora_device.uninstall()
