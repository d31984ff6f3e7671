"""Exports from a finished run's DeepSpeed checkpoint: a PEFT adapter or a consolidated HF model.

Exporting on the driver from the merged checkpoint needs no collectives and works the same for
ZeRO-2 and ZeRO-3: DeepSpeed's `zero_to_fp32` reassembles the fp32 master weights from every rank's
partition, so the exported weights are exactly the training weights. A run without ZeRO (one fp32
worker, see `deepspeed_config.zero_stage`) has them whole in the checkpoint's module state. The
tokenizer and the chat template used in training are saved alongside, so serving renders prompts
the same way.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

from rayft.config import TrainConfig
from rayft.storage import content_hash
from rayft.training.checkpoints import weights_only_loads

EXPORT_INFO = "rayft_export.json"


def _peft_config(train: TrainConfig, base: str):
    from peft import LoraConfig

    lora = train.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=lora.target_modules,
        task_type="CAUSAL_LM",
        base_model_name_or_path=base,
    )


def _copy_generation_config(base: str, model) -> None:
    from transformers import GenerationConfig

    try:
        model.generation_config = GenerationConfig.from_pretrained(base)
    except OSError:
        pass  # the base has none; transformers derives one from the model config


def training_weights(checkpoint_dir: str, adapter: bool) -> dict:
    """The fp32 training weights (the trainable ones only for an adapter) in a run's checkpoint, read
    without running code from it (`checkpoints.weights_only_loads`)."""
    import torch
    from deepspeed.utils.zero_to_fp32 import get_fp32_state_dict_from_zero_checkpoint

    ds = Path(checkpoint_dir) / "ds"
    with weights_only_loads():
        if any(ds.glob("*optim_states.pt")):  # ZeRO: one partition per rank
            with contextlib.redirect_stdout(sys.stderr):  # it prints its progress: a log's business
                return get_fp32_state_dict_from_zero_checkpoint(
                    checkpoint_dir, tag="ds", exclude_frozen_parameters=adapter
                )
        # Without ZeRO the module state holds the weights (saved with frozen ones left out for adapters).
        return torch.load(ds / "mp_rank_00_model_states.pt", map_location="cpu", weights_only=True)["module"]


def export_checkpoint(checkpoint_dir: str, base: str, train: TrainConfig, tokenizer, out_dir: str | Path) -> dict:
    """Write the adapter (lora/qlora) or full model from `checkpoint_dir` to `out_dir`."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    adapter = train.adapter
    state = training_weights(checkpoint_dir, adapter)
    config = AutoConfig.from_pretrained(base)
    if adapter:
        from peft import get_peft_model

        with torch.device("meta"):
            skeleton = get_peft_model(AutoModelForCausalLM.from_config(config), _peft_config(train, base))
        skeleton.save_pretrained(out_dir, state_dict=state)
    else:
        with torch.device("meta"):
            model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(state, strict=True, assign=True)
        model.tie_weights()
        _copy_generation_config(base, model)
        model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    info = {"kind": "adapter" if adapter else "full", "base_model": base, "method": train.method}
    (out_dir / EXPORT_INFO).write_text(json.dumps(info, indent=2) + "\n")
    return info | {"path": str(out_dir), "weights_hash": content_hash(out_dir)}


class ExportMismatch(RuntimeError):
    """Exported weights differ from the training weights they were exported from."""


def verify_export(out_dir: str | Path, fingerprint: dict[str, list[float]], adapter: bool, rel_tol: float) -> int:
    """Check every fingerprinted training weight against the exported files (each moment of
    `tensor_fingerprint` within `rel_tol` of the tensor's magnitude); returns how many tensors were
    checked. `rel_tol` allows for bf16 training copies against fp32 master weights."""
    from safetensors.torch import load_file

    from rayft.training.model import tensor_fingerprint

    exported = {}
    for path in sorted(Path(out_dir).glob("*.safetensors")):
        exported.update(load_file(path))
    for name, expected in fingerprint.items():
        key = name.replace(".default.", ".") if adapter else name
        if key not in exported:
            raise ExportMismatch(f"{name}: missing from the export in {out_dir}")
        if exported[key].numel() == 0:
            raise ExportMismatch(f"{name}: empty in the export (a ZeRO-3 shard saved without gathering?)")
        tolerance = rel_tol * max(expected[1], 1e-12)
        if any(abs(got - want) > tolerance for got, want in zip(tensor_fingerprint(exported[key]), expected)):
            raise ExportMismatch(f"{name}: exported weights differ from the training weights")
    return len(fingerprint)
