"""The plain training loop every part of train_throughput.py measures against, and what every part
gets (`Bench`): a model loaded as the bench loads it, timed optimizer steps, their rate."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch

from rayft.training.objectives import to_model_inputs

WARMUP = 2  # steps left out of every rate
LR = 1e-4


@dataclass(frozen=True)
class Sizes:
    model: str  # rayft.tiny size
    examples: int  # parts (a) and (d)
    steps: int  # optimizer steps per side in part (b)
    rounds: int  # timed rounds per side in parts (c) and (d)
    methods: tuple[str, ...]  # parts (b) and (c)


@dataclass(frozen=True)
class Bench:
    """What every part gets: the model, a scratch folder and the sizes of this run."""

    model_dir: Path
    work: Path
    pad_id: int
    vocab: int
    sizes: Sizes


def step_inputs(batch) -> dict:
    """A micro-batch's forward inputs as the worker's supervised step builds them (`objectives.py`)."""
    return to_model_inputs(batch) | {"labels": torch.tensor(batch.labels)}


def load(model_dir: Path, method: str = "full"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    return model.train()


def timed_steps(model, batches, pad_id: int, lr: float = LR) -> list[tuple[float, int]]:
    """Train on `batches` as a plain loop (AdamW, cosine schedule, clipping): (seconds, real tokens)
    of each optimizer step."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=len(batches))
    out = []
    for batch in batches:
        started = time.perf_counter()
        loss = model(**step_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        out.append((time.perf_counter() - started, sum(1 for row in batch.input_ids for t in row if t != pad_id)))
    return out


def rate(steps: list[tuple[float, int]]) -> float:
    """Tokens/s over the steps after the first WARMUP."""
    kept = steps[WARMUP:]
    if not kept:
        raise ValueError(f"{len(steps)} steps: the rate needs more than the {WARMUP} warm-up steps")
    return sum(n for _, n in kept) / sum(s for s, _ in kept)
