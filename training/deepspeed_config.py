"""DeepSpeed configs generated from rayft's train section, with an optional raw JSON override."""

from __future__ import annotations

import copy

from rayft.config import TrainConfig


def merge(base: dict, override: dict) -> dict:
    """`override` merged over `base`, recursively for nested mappings."""
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def deepspeed_config(train: TrainConfig, micro_batch: int, use_gpu: bool) -> dict:
    """The DeepSpeed config for one worker: ZeRO stage, offload, precision, accumulation, clipping.

    rayft passes its own torch optimizer and transformers scheduler to `deepspeed.initialize`, so
    the config has no optimizer or scheduler section (and DeepSpeed compiles no fused CPU Adam).
    """
    zero: dict = {"stage": train.deepspeed.zero_stage}
    if train.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.deepspeed.offload_params:  # the config allows it with ZeRO-3 only
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.deepspeed.zero_stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = True
    config = {
        "train_micro_batch_size_per_gpu": micro_batch,
        "gradient_accumulation_steps": train.grad_accum,
        "gradient_clipping": train.max_grad_norm,
        "zero_optimization": zero,
        "bf16": {"enabled": use_gpu},
        "fp16": {"enabled": False},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
    }
    if train.deepspeed.offload_optimizer:
        # Our torch AdamW steps the offloaded fp32 master weights; no DeepSpeedCPUAdam build needed.
        config["zero_force_ds_cpu_optimizer"] = False
    return merge(config, train.deepspeed.override or {})
