"""A driver-side progress bar that follows rank 0's step log while Ray Train runs.

The log is on the node where rank 0 runs; on a single machine (and the head node) that is local, so
the bar moves. Elsewhere the bar stays put and the periodic lines workers print are the progress.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


class FollowLog(threading.Thread):
    """Shows step/total, loss and validation loss from a JSONL log until `stop()`."""

    def __init__(self, path: Path, total: int, title: str, enabled: bool = True):
        super().__init__(daemon=True)
        self.path, self.total, self.title, self.enabled = path, total, title, enabled
        self.done = threading.Event()

    def run(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                   TextColumn("{task.fields[status]}"))
        with Progress(*columns, disable=not self.enabled) as bar:
            task = bar.add_task(self.title, total=self.total, status="")
            offset = 0
            while not self.done.wait(0.5):
                if not self.path.exists():
                    continue
                with self.path.open() as log:
                    log.seek(offset)
                    lines = log.readlines()
                    offset = log.tell()
                for record in (json.loads(line) for line in lines if line.endswith("\n")):
                    if "loss" not in record:
                        continue
                    status = f"loss {record['loss']:.4f}"
                    if record.get("val_loss") is not None:
                        status += f"  val {record['val_loss']:.4f}"
                    bar.update(task, completed=record["step"], status=status)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
