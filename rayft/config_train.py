"""The `train` section of the rayft config: what is trained (LoRA, full, QLoRA), towards what
(supervised fine-tuning, or DPO on preference pairs), from where (`init_from`: a registered
version to continue), and how (DeepSpeed, batch, schedule, checkpoints). A leaf module like
`rayft.config`, which embeds it."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from rayft.config_base import Auto, Section


class LoraConfig(Section):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: Literal["all-linear"] | list[str] = "all-linear"


class DeepSpeedConfig(Section):
    zero_stage: Literal[2, 3] = 2
    offload_optimizer: bool = False
    offload_params: bool = False
    override: dict | None = Field(None, description="raw DeepSpeed JSON merged over the generated config")

    @model_validator(mode="after")
    def _param_offload_needs_zero3(self):
        if self.offload_params and self.zero_stage != 3:
            raise ValueError("offload_params needs zero_stage 3")
        return self


class DpoConfig(Section):
    """Direct preference optimisation (`train.method: dpo`) on a preference dataset (docs/training.md)."""

    beta: float = Field(0.1, gt=0, description="how far the policy may move from the reference")
    loss: Literal["sigmoid", "ipo"] = Field("sigmoid", description="DPO's logistic loss, or IPO's squared one")
    sft_weight: float = Field(0.0, ge=0, description="weight of the chosen reply's language-model loss added")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="conservative DPO: the share of flipped labels")
    tune: Literal["lora", "full"] = Field(
        "lora",
        description="train a LoRA adapter (the reference is the model with the adapter off) or every "
        "weight (the reference is a frozen copy)",
    )
    precompute_reference: bool = Field(
        False, description="compute the reference log-probs once on Ray Data before training (no reference pass)"
    )


class TrainConfig(Section):
    dataset: str | None = Field(None, description="prepared dataset folder; default data.out")
    method: Literal["lora", "full", "qlora", "dpo"] = Field(
        "lora", description="supervised LoRA, full or QLoRA fine-tuning, or DPO on preference pairs (train.dpo)"
    )
    dpo: DpoConfig = Field(default_factory=DpoConfig)
    init_from: str | None = Field(
        None,
        description="continue from a registered version (NAME:VERSION or NAME:ALIAS) of the same base: its "
        "adapter or full weights, verified by hash, and it is the new version's parent",
    )
    lora: LoraConfig = Field(default_factory=LoraConfig)
    deepspeed: DeepSpeedConfig = Field(default_factory=DeepSpeedConfig)
    num_workers: int = Field(2, gt=0)
    cpus_per_worker: float = Field(0.5, gt=0)
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="how workers are placed on nodes (Ray placement group strategy)"
    )
    use_gpu: bool = False
    epochs: int | Auto = "auto"
    max_steps: int | None = Field(None, gt=0, description="stop after this many optimizer steps")
    batch_size: int | Auto = "auto"
    grad_accum: int = Field(1, gt=0)
    learning_rate: float | Auto = "auto"
    scheduler: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_ratio: float = Field(0.05, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    max_seq_len: int = Field(512, gt=8)
    packing: bool = False
    seed: int = 0
    eval_every: int = Field(50, gt=0, description="validation every N optimizer steps")
    early_stopping_patience: int | None = Field(None, gt=0)
    checkpoint_every: int = Field(100, gt=0)
    keep_checkpoints: int = Field(2, gt=0)
    epoch_checkpoints: int = Field(
        0,
        ge=0,
        description="also register the last N epochs' end states as versions (alias ckpt-step-<step>), "
        "each servable by name; 0: only the best checkpoint is registered",
    )
    storage_path: str | None = Field(None, description="runs folder (local, s3:// or gs://); default $RAYFT_HOME/runs")
    export_path: str | None = Field(
        None, description="exports folder (local, s3:// or gs://); default $RAYFT_HOME/models"
    )
    max_failures: int = Field(
        2, ge=0, description="worker-group restarts from the last checkpoint before the run fails"
    )
    tensorboard: bool = Field(False, description="also write metrics as TensorBoard events into the run folder")
    tokens_per_second: float = Field(
        2000, gt=0, description="training throughput measured on this base and hardware; for estimates"
    )
    price_per_gpu_hour: float = Field(0, ge=0, description="what one GPU-hour costs; for estimates")

    @field_validator("epochs", "batch_size")
    @classmethod
    def _positive_or_auto(cls, value):
        if value != "auto" and value <= 0:
            raise ValueError("must be a positive integer or 'auto'")
        return value

    @field_validator("learning_rate")
    @classmethod
    def _positive_lr(cls, value):
        if value != "auto" and value <= 0:
            raise ValueError("must be a positive number or 'auto'")
        return value

    @property
    def objective(self) -> Literal["sft", "dpo"]:
        """What the loss is: supervised next-token on the learned turns, or DPO on preference pairs."""
        return "dpo" if self.method == "dpo" else "sft"

    @property
    def adapter(self) -> bool:
        """Whether a LoRA adapter is trained (lora, qlora, DPO with `dpo.tune: lora`), not every weight."""
        return self.method in ("lora", "qlora") or (self.method == "dpo" and self.dpo.tune == "lora")
