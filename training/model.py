"""Loading the model to train (full, LoRA or QLoRA) and wrapping it in a DeepSpeed engine."""

from __future__ import annotations

from rayft.config import LoraConfig, TrainConfig

SCHEDULERS = {"cosine": "cosine", "linear": "linear", "constant": "constant_with_warmup"}
GOLDEN = 0.6180339887498949
FINGERPRINT_CHUNK = 1 << 22


def linear_module_names(base: str) -> set[str]:
    """Leaf names of the model's linear layers (e.g. q_proj), read without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(base)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    output = model.get_output_embeddings()
    return {
        name.rsplit(".", 1)[-1]
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and module is not output
    }


def check_target_modules(base: str, lora: LoraConfig) -> None:
    """Raise ValueError naming any LoRA target module the model does not have."""
    if lora.target_modules == "all-linear":
        return
    available = linear_module_names(base)
    unknown = sorted(set(lora.target_modules) - available)
    if unknown:
        raise ValueError(
            f"train.lora.target_modules: {', '.join(unknown)} not in the model; "
            f"its linear modules are {', '.join(sorted(available))}"
        )


def is_adapter_folder(path: str) -> bool:
    from pathlib import Path

    return (Path(path) / "adapter_config.json").exists()


def _starting_weights(base: str, train: TrainConfig, init_from: str | None):
    """The model training starts from: the base, a registered full version (`init_from`), or the base
    with a registered adapter merged in when every weight is trained; caches off for training."""
    import torch
    from transformers import AutoModelForCausalLM

    kwargs = {"dtype": torch.bfloat16 if train.use_gpu else torch.float32, "attn_implementation": "sdpa"}
    if train.method == "qlora":
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_compute_dtype=torch.bfloat16,
            bnb_4bit_use_double_quant=True,
        )
    continues_adapter = init_from is not None and is_adapter_folder(init_from)
    model = AutoModelForCausalLM.from_pretrained(init_from if init_from and not continues_adapter else base, **kwargs)
    model.config.use_cache = False
    if continues_adapter and not train.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_from).merge_and_unload()
    return model


def load_model(base: str, train: TrainConfig, init_from: str | None = None):
    """The model to train: every weight (full), or a LoRA adapter on the frozen base, new or
    continuing the registered adapter `init_from` (which, for DPO, is also kept as the frozen
    `reference` adapter, `dpo.py`)."""
    model = _starting_weights(base, train, init_from)
    if not train.adapter:
        return model
    from peft import LoraConfig as PeftLoraConfig
    from peft import PeftModel, get_peft_model, prepare_model_for_kbit_training

    if train.method == "qlora":
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    if init_from and is_adapter_folder(init_from):
        from rayft.training.dpo import REFERENCE_ADAPTER

        model = PeftModel.from_pretrained(model, init_from, is_trainable=True)
        if train.objective == "dpo" and not train.dpo.precompute_reference:
            model.load_adapter(init_from, adapter_name=REFERENCE_ADAPTER, is_trainable=False)
        return model
    lora = train.lora
    return get_peft_model(
        model,
        PeftLoraConfig(
            r=lora.r,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=lora.target_modules,
            task_type="CAUSAL_LM",
        ),
    )


def frozen_start(base: str, train: TrainConfig, init_from: str | None):
    """The model training starts from, frozen for inference: DPO's reference."""
    model = _starting_weights(base, train, init_from)
    if init_from and is_adapter_folder(init_from) and train.adapter:
        from peft import PeftModel

        model = PeftModel.from_pretrained(model, init_from)
    return model.eval().requires_grad_(False)


def load_reference(base: str, train: TrainConfig, init_from: str | None, ds_config: dict):
    """DPO with full fine-tuning: a frozen copy of the starting model, partitioned like the policy
    under ZeRO-3 (an engine without optimizer), whole otherwise. None where no copy is needed:
    supervised training, LoRA (`dpo.reference_weights`), reference log-probs computed beforehand."""
    if train.objective != "dpo" or train.adapter or train.dpo.precompute_reference:
        return None
    model = frozen_start(base, train, init_from)
    if ds_config["zero_optimization"]["stage"] != 3:
        return model
    import deepspeed

    config = {k: v for k, v in ds_config.items() if k not in ("gradient_accumulation_steps", "gradient_clipping")}
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeed's eval() returns None
    return engine


def build_engine(model, train: TrainConfig, ds_config: dict, learning_rate: float, warmup: int, total: int):
    """A DeepSpeed engine over `model` with torch AdamW and a transformers warmup schedule."""
    import deepspeed
    import deepspeed.ops
    import torch
    from transformers import get_scheduler

    # DeepSpeed would JIT-compile a shared-memory allreduce op (~55 s on first use) that only its
    # inference path uses; training allreduces go through the torch process group (gloo on CPU).
    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, weight_decay=train.weight_decay)
    scheduler = get_scheduler(
        SCHEDULERS[train.scheduler], optimizer, num_warmup_steps=warmup, num_training_steps=max(total, 1)
    )
    engine, _, _, scheduler = deepspeed.initialize(
        model=model, optimizer=optimizer, lr_scheduler=scheduler, config=ds_config
    )
    if engine.zero_optimization_stage() == 0 and engine.dp_world_size == 1 and not engine.bfloat16_enabled():
        _run_as_single_fp32_process(engine, params)
    return engine, scheduler


def _run_as_single_fp32_process(engine, params) -> None:
    """One fp32 worker without ZeRO (`deepspeed_config.zero_stage`). DeepSpeed would still flatten
    every gradient into a buffer, all-reduce it with itself and copy it back after each backward:
    turned off, as there is nothing to reduce. Its fp32 clipping drops the norm it computes: the
    clip here keeps it, so `get_global_grad_norm` reports it as it does under ZeRO."""
    import torch

    def clip_and_keep_norm() -> None:
        engine._global_grad_norm = float(torch.nn.utils.clip_grad_norm_(params, engine.gradient_clipping()))

    engine.enable_backward_allreduce = False
    engine.clip_fp32_gradients = clip_and_keep_norm


def tensor_fingerprint(values) -> list[float]:
    """[sum, sum of |w|, sum of w·c] in float64, where c is a fixed weight per flat position (the
    fractional parts of i·φ, all distinct): equal tensors agree, and so do no permuted, transposed
    or shifted ones. Computed in chunks, so a large embedding never needs a second float64 copy."""
    import torch

    flat = values.detach().reshape(-1)
    total = magnitude = positioned = 0.0
    for start in range(0, flat.numel(), FINGERPRINT_CHUNK):
        chunk = flat[start : start + FINGERPRINT_CHUNK].double()
        weights = torch.arange(start, start + chunk.numel(), dtype=torch.float64).mul_(GOLDEN).frac_()
        total += float(chunk.sum())
        magnitude += float(chunk.abs().sum())
        positioned += float((chunk * weights).sum())
    return [total, magnitude, positioned]


def weight_fingerprint(module, trainable_only: bool) -> dict[str, list[float]]:
    """`tensor_fingerprint` of every (trainable) parameter, gathered under ZeRO-3 (a collective:
    every rank calls it). Exports are checked against it, so a bad consolidation cannot pass silently."""
    import deepspeed

    fingerprint = {}
    for name, param in module.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        with deepspeed.zero.GatheredParameters([param], modifier_rank=None):
            fingerprint[name] = tensor_fingerprint(param)
    return fingerprint
