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


def zero_stage(train: TrainConfig, use_gpu: bool) -> int:
    """The ZeRO stage a run uses: the configured one, except 0 (no ZeRO) for a single worker
    training in fp32 without offload. ZeRO partitions state over workers, so one worker has
    nothing to partition, and in fp32 ZeRO's flat master copy duplicates the weights themselves:
    every step would copy each gradient into it and each updated weight back (bench/RESULTS.md)."""
    ds = train.deepspeed
    if train.num_workers == 1 and not use_gpu and not (ds.offload_optimizer or ds.offload_params):
        return 0
    return ds.zero_stage


def deepspeed_config(train: TrainConfig, micro_batch: int, use_gpu: bool) -> dict:
    """The DeepSpeed config for one worker: ZeRO stage (see `zero_stage`), offload, precision,
    accumulation, clipping.

    rayft passes its own torch optimizer and transformers scheduler to `deepspeed.initialize`, so
    the config has no optimizer or scheduler section (and DeepSpeed compiles no fused CPU Adam).
    """
    stage = zero_stage(train, use_gpu)
    zero: dict = {"stage": stage}
    if train.deepspeed.offload_optimizer:
        zero["offload_optimizer"] = {"device": "cpu", "pin_memory": use_gpu}
    if train.deepspeed.offload_params:  # the config allows it with ZeRO-3 only
        zero["offload_param"] = {"device": "cpu", "pin_memory": use_gpu}
    if stage == 3:
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
