"""TRL's side of train_throughput.py's comparisons with the field (dev/bench only: nothing under
rayft/ imports TRL; `trl` is in the `dev` extra).

`trl_packed_run`: TRL 1.16's `SFTTrainer` with packing on the bench's own token rows. Its settings
follow from what the comparison holds equal:
- packing `bfd` (best-fit decreasing) into rows of `max_length`; with it TRL turns `padding_free` on
  and its collator joins a step's rows into one row with position ids restarting per example and no
  attention mask, so attention stays inside each example (transformers reads the packed examples
  from the position ids; TRL's `compute_loss` runs the forward with `use_cache=False`), as rayft's
  packed rows do;
- `per_device_train_batch_size` packed rows per step, like rayft's micro-batch of rows;
- fp32 on the CPU (SFTConfig defaults to bf16), no gradient checkpointing (SFTConfig defaults to
  it; rayft's loop recomputes nothing), AdamW at the same learning rate with a cosine schedule,
  no warm-up, no weight decay, clipping at 1.0; no logging, saving or evaluation during the run.
Everything else is TRL's default (its optimizer implementation, its per-step token accuracy and
entropy metrics, its data loader). Step times come from a callback around each optimizer step
(the batch is already collated when it starts, as rayft's loop times prebuilt batches), tokens from
the trainer's own count of non-padding input tokens.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class TrlRun:
    model: object  # the trained model, for the isolation check
    steps: list[tuple[float, int]]  # (seconds, non-padding tokens) of each optimizer step
    rows: int  # packed rows TRL made of the examples
    cells: int  # their tokens, padding included (TRL's padding-free rows have none)
    first_batch: dict  # TRL's collated first micro-batch, as its forward gets it
    settings: dict  # what TRL ran with, for the record


def trl_packed_run(
    model, model_dir: Path, examples: list[dict], out: Path, rows_per_step: int, max_seq_len: int, lr: float
) -> TrlRun:
    """Train `model` for one epoch over `examples` (`input_ids` and `labels`, -100 where not
    learned) with TRL's SFTTrainer, packing on."""
    from datasets import Dataset
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    class StepTimes(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[tuple[float, int]] = []

        def on_step_begin(self, args, state, control, **kwargs):
            self.begun = (time.perf_counter(), state.num_input_tokens_seen)

        def on_step_end(self, args, state, control, **kwargs):
            started, seen = self.begun
            self.steps.append((time.perf_counter() - started, state.num_input_tokens_seen - seen))

    config = SFTConfig(
        output_dir=str(out),
        packing=True,
        packing_strategy="bfd",
        max_length=max_seq_len,
        per_device_train_batch_size=rows_per_step,
        num_train_epochs=1,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        bf16=False,
        fp16=False,
        use_cpu=True,
        gradient_checkpointing=False,
        include_num_input_tokens_seen="non_padding",
        logging_strategy="no",
        save_strategy="no",
        eval_strategy="no",
        report_to="none",
        disable_tqdm=True,
        dataloader_pin_memory=False,
        seed=0,
    )
    timer = StepTimes()
    trainer = SFTTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(examples),
        processing_class=AutoTokenizer.from_pretrained(model_dir),
        callbacks=[timer],
    )
    dataset = trainer.train_dataset
    first_batch = trainer.data_collator([dataset[i] for i in range(min(rows_per_step, len(dataset)))])
    trainer.train()
    settings = {
        "trl_padding_free": trainer.padding_free,
        "optim": str(config.optim),
        "gradient_checkpointing": config.gradient_checkpointing,
        "dtype": str(next(model.parameters()).dtype),
    }
    cells = sum(len(ids) for ids in dataset["input_ids"])
    return TrlRun(model, timer.steps, len(dataset), cells, first_batch | {"use_cache": False}, settings)
