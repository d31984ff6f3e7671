"""What a training run will take before any worker starts: the plan's steps and epochs
(`rayft.plan`), the tokens it trains on, the time at the throughput measured for this base and
hardware (`train.tokens_per_second`, e.g. from bench/train_throughput.py) and the price of the GPU
hours (`train.price_per_gpu_hour`). `rayft estimate CONFIG` prints it; the fine-tuning API puts it
on every job (`estimated_finish`, `x_rayft.estimate`). A leaf module: it imports no stage.
"""

from __future__ import annotations

import math

from pydantic import BaseModel

from rayft.config import SplitConfig, TrainConfig
from rayft.plan import TrainPlan, make_plan


class Estimate(BaseModel):
    records: int  # usable records in the data, before the split
    tokens: int  # tokens of one epoch over the training split
    epochs: int  # passes over the training split the steps make
    steps: int
    trained_tokens: int  # tokens the run trains on, all epochs together
    seconds: float
    gpus: int
    gpu_hours: float
    cost: float  # gpu_hours × train.price_per_gpu_hour

    def summary(self) -> str:
        return (
            f"{self.records} records, {self.tokens:,} tokens an epoch → {self.steps} steps over {self.epochs} "
            f"epochs, {self.trained_tokens:,} tokens trained, about {self.seconds / 60:.1f} min"
            + (f" on {self.gpus} GPUs: {self.gpu_hours:.2f} GPU-hours, cost {self.cost:.2f}" if self.gpus else "")
        )


def estimate(train: TrainConfig, split: SplitConfig, records: int, tokens: int) -> Estimate:
    """The run a config would make of `records` usable records holding `tokens` tokens in all
    (raises `rayft.plan.PlanError` when they cannot train)."""
    n_train = math.floor(records * split.train)
    n_val = math.floor(records * split.val)
    train_tokens = round(tokens * n_train / records) if records else 0
    plan: TrainPlan = make_plan(train, n_train, n_val, train_tokens)
    trained = round(train_tokens * plan.total_steps / plan.steps_per_epoch)
    seconds = trained / train.tokens_per_second
    gpus = train.num_workers if train.use_gpu else 0
    gpu_hours = seconds / 3600 * gpus
    return Estimate(
        records=records,
        tokens=train_tokens,
        epochs=math.ceil(plan.total_steps / plan.steps_per_epoch),  # passes made (max_steps may end one early)
        steps=plan.total_steps,
        trained_tokens=trained,
        seconds=round(seconds, 1),
        gpus=gpus,
        gpu_hours=round(gpu_hours, 4),
        cost=round(gpu_hours * train.price_per_gpu_hour, 2),
    )
