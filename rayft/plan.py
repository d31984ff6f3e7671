"""Turning a train config and a dataset's size into concrete numbers, before any worker starts.

`auto` values follow documented rules (docs/training.md), modelled on the OpenAI fine-tuning API:

- epochs: 3, raised so that small sets see at least 100 examples in total (at most 25 epochs),
  lowered so that large sets see at most 25,000 (at least 1 epoch);
- batch_size (the global batch: examples per optimizer step over all workers and accumulation):
  about n/200 rounded to a power of two, between 8 and 64, then rounded up to a multiple of
  workers × grad_accum;
- learning_rate: 2e-4 for LoRA/QLoRA, 2e-5 for full fine-tuning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from rayft.config import TrainConfig


class PlanError(ValueError):
    """The data and the config cannot make a training run; says why."""


def auto_epochs(n: int) -> int:
    epochs = 3
    if n * epochs < 100:
        epochs = min(25, math.ceil(100 / n))
    elif n * epochs > 25_000:
        epochs = max(1, 25_000 // n)
    return epochs


def auto_batch_size(n: int) -> int:
    return min(64, max(8, 2 ** round(math.log2(max(n / 200, 1)))))


def auto_learning_rate(train: TrainConfig) -> float:
    """Common starting points: supervised 2e-4 (LoRA) or 2e-5 (full); DPO, which only nudges a
    model that already answers, 5e-6 (LoRA) or 5e-7 (full)."""
    if train.objective == "dpo":
        return 5e-6 if train.adapter else 5e-7
    return 2e-4 if train.adapter else 2e-5


@dataclass
class TrainPlan:
    """Resolved numbers for one run; sent to every worker."""

    epochs: int
    global_batch: int
    micro_batch: int  # per worker, per forward
    learning_rate: float
    steps_per_epoch: int
    total_steps: int
    warmup_steps: int
    n_train: int
    n_val: int

    def to_dict(self) -> dict:
        return asdict(self)


def make_plan(train: TrainConfig, n_train: int, n_val: int, train_tokens: int) -> TrainPlan:
    """Resolve `auto` values and step counts; raises PlanError on data that cannot train."""
    if n_train == 0:
        raise PlanError("the training split is empty: nothing to train on")
    per_step = train.num_workers * train.grad_accum
    batch = auto_batch_size(n_train) if train.batch_size == "auto" else train.batch_size
    batch = math.ceil(batch / per_step) * per_step
    micro = batch // per_step
    if train.packing:
        rows = max(1, math.ceil(train_tokens / (0.9 * train.max_seq_len)))  # packed rows ≈ tokens / fill
    else:
        rows = n_train
    if rows < batch:
        raise PlanError(
            f"batch of {batch} ({micro} per worker × {train.num_workers} workers × {train.grad_accum} "
            f"accumulation) is larger than the data ({rows} {'packed rows' if train.packing else 'examples'})"
        )
    epochs = auto_epochs(n_train) if train.epochs == "auto" else train.epochs
    steps_per_epoch = rows // batch
    total = steps_per_epoch * epochs
    if train.max_steps:
        total = min(total, train.max_steps) if train.epochs != "auto" else train.max_steps
        epochs = max(epochs, math.ceil(total / steps_per_epoch))
    lr = auto_learning_rate(train) if train.learning_rate == "auto" else train.learning_rate
    return TrainPlan(
        epochs=epochs,
        global_batch=batch,
        micro_batch=micro,
        learning_rate=lr,
        steps_per_epoch=steps_per_epoch,
        total_steps=total,
        warmup_steps=round(train.warmup_ratio * total),
        n_train=n_train,
        n_val=n_val,
    )
