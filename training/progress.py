"""A driver-side progress bar that follows rank 0's step log while Ray Train runs.

The log is on the node where rank 0 runs; on a single machine (and the head node) that is local, so
the bar moves. Elsewhere the bar stays put and the periodic lines workers print are the progress.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path


class LogTail:
    """Reads the complete JSON lines added to a log since the last read. A log rewritten shorter
    (a restarted worker cuts it back to its checkpoint) is read again from the start."""

    def __init__(self, path: Path):
        self.path, self.offset = path, 0

    def read_new(self) -> list[dict]:
        if not self.path.exists():
            return []
        if self.path.stat().st_size < self.offset:
            self.offset = 0
        with self.path.open("rb") as log:
            log.seek(self.offset)
            data = log.read()
        complete = data[: data.rfind(b"\n") + 1]  # a line still being written waits for the next read
        self.offset += len(complete)
        records = []
        for line in complete.decode("utf-8", "replace").splitlines():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # read across a rewrite; the rewritten lines come again
        return records


class FollowLog(threading.Thread):
    """Shows step/total, loss and validation loss from a JSONL log until `stop()`."""

    def __init__(self, path: Path, total: int, title: str, enabled: bool = True):
        super().__init__(daemon=True)
        self.tail, self.total, self.title, self.enabled = LogTail(path), total, title, enabled
        self.done = threading.Event()

    def run(self) -> None:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

        columns = (
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
        )
        with Progress(*columns, disable=not self.enabled) as bar:
            task = bar.add_task(self.title, total=self.total, status="")
            while not self.done.wait(0.5):
                for record in self.tail.read_new():
                    if "loss" not in record:
                        continue
                    status = f"loss {record['loss']:.4f}"
                    if record.get("val_loss") is not None:
                        status += f"  val {record['val_loss']:.4f}"
                    bar.update(task, completed=record["step"], status=status)

    def stop(self) -> None:
        self.done.set()
        self.join(timeout=5)
