"""The run's step log: one JSON line per optimizer step on rank 0, carried in every checkpoint, so a
resumed run's curve continues instead of restarting; mirrored to TensorBoard when configured."""

from __future__ import annotations

import json
from pathlib import Path

LOG_NAME = "metrics.jsonl"


class RunLog:
    """Rank 0's per-step JSONL log (restored from and saved into checkpoints), mirrored to
    TensorBoard when configured."""

    def __init__(self, path: Path, enabled: bool, tensorboard_dir: str | None = None):
        self.path, self.enabled = path, enabled
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tensorboard = None
        if enabled and tensorboard_dir:
            from tensorboardX import SummaryWriter

            self.tensorboard = SummaryWriter(tensorboard_dir)

    def restore(self, checkpoint_dir: str, step: int) -> None:
        source = Path(checkpoint_dir) / LOG_NAME
        if self.enabled and source.exists():
            lines = [line for line in source.read_text().splitlines() if json.loads(line).get("step", 0) <= step]
            self.path.write_text("".join(line + "\n" for line in lines))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as out:
                out.write(json.dumps(record) + "\n")
            if self.tensorboard and "step" in record:
                for key, value in record.items():
                    if isinstance(value, float):
                        self.tensorboard.add_scalar(f"train/{key}", value, record["step"])
                self.tensorboard.flush()
            if "val_loss" in record or "event" in record:  # the driver's bar shows every step
                print(
                    "[rayft] "
                    + " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items()),
                    flush=True,
                )

    def close(self) -> None:
        """Write out what is still queued for TensorBoard (its writer works asynchronously)."""
        if self.tensorboard:
            self.tensorboard.close()
