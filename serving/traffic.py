"""Traffic sampling: a configured share of answered chat requests, recorded per version (opt-in).

`serve.traffic.sample_share` of the chat completions a version answers are written to its traffic
dataset, `<serve.traffic.path>/<NAME>/<VERSION>/<YYYY-MM-DD>.jsonl` (the base under `<base name>/base`):
one chat record per line, the request's turns plus the answer as the assistant's turn, with the
version's ref and weights hash, the project of the caller who asked (`rayft.projects`: the record
is that project's data) and the time. Every text is scrubbed with the data stage's PII
scrubber (`rayft.data.pii.scrub`, and `serve.traffic.pii_detector` when set) before anything is
written, so raw PII never reaches the disk. Day files older than `retention_days` are deleted as
new records arrive (and at start). `rayft data prepare` reads a version's folder back as a dataset;
`rayft review prepare --source traffic` and `rayft drift` read it too. Streamed answers and text
completions are not sampled.
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

from rayft.config import TrafficConfig
from rayft.data.pii import load_detector, scrub
from rayft.home import rayft_home

DAY = 86400.0
logger = logging.getLogger("ray.serve")


def version_folder(root: Path, served: str) -> Path:
    """Where a served model's records go: `NAME/VERSION` for a registry ref, `NAME/base` otherwise."""
    name, _, version = served.partition(":")
    return root / name / (version if version.isdigit() else "base")


class TrafficSampler:
    """Decides which answers are recorded, scrubs and appends them; one per ingress replica."""

    def __init__(self, config: TrafficConfig, rng: random.Random | None = None):
        self.config = config
        self.root = Path(config.path) if config.path else rayft_home() / "traffic"
        self.rng = rng or random.Random()
        self.ner = load_detector(config.pii_detector)
        self.lock = threading.Lock()
        self.pruned_day = None
        if self.enabled and self.root.is_dir():
            self.prune()

    @property
    def enabled(self) -> bool:
        return self.config.sample_share > 0

    def chosen(self) -> bool:
        """Whether this request is one of the sampled share."""
        return self.enabled and self.rng.random() < self.config.sample_share

    def scrubbed(self, text: str) -> str:
        return scrub(text, self.ner)[0]

    def record(
        self,
        served: str,
        weights_hash: str | None,
        messages: list[dict],
        answer: str,
        project: str | None = None,
        now: float | None = None,
    ) -> Path:
        """Append one scrubbed record for `served` (a registry ref or the base name), asked by a
        caller of `project`; returns its file."""
        now = time.time() if now is None else now
        turns = [{"role": m["role"], "content": self.scrubbed(content_text(m.get("content")))} for m in messages]
        line = {
            "messages": turns + [{"role": "assistant", "content": self.scrubbed(answer)}],
            "model": served,
            "weights_hash": weights_hash,
            "project": project,
            "sampled_at": datetime.fromtimestamp(now, timezone.utc).isoformat(timespec="seconds"),
        }
        day = datetime.fromtimestamp(now, timezone.utc).strftime("%Y-%m-%d")
        path = version_folder(self.root, served) / f"{day}.jsonl"
        with self.lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            with path.open("a", encoding="utf-8") as out:
                out.write(json.dumps(line, ensure_ascii=False) + "\n")
            if self.pruned_day != day:
                self.prune(now)
                self.pruned_day = day
        return path

    def save(self, served: str, weights_hash: str | None, messages: list[dict], answer: str, project: str) -> None:
        """`record`, for a worker thread of the ingress: a failure is logged, never raised."""
        try:
            self.record(served, weights_hash, messages, answer, project)
        except Exception as error:  # a full disk must not fail the request that was already answered
            logger.warning("rayft serve: traffic record for %s not written: %s", served, error)

    def prune(self, now: float | None = None) -> list[Path]:
        """Delete day files older than the retention limit; returns what was deleted."""
        now = time.time() if now is None else now
        deleted = []
        for path in self.root.glob("*/*/*.jsonl"):
            try:
                day = datetime.strptime(path.stem, "%Y-%m-%d").replace(tzinfo=timezone.utc).timestamp()
            except ValueError:
                continue
            if now - (day + DAY) > self.config.retention_days * DAY:
                path.unlink(missing_ok=True)
                deleted.append(path)
        return deleted


def content_text(content) -> str:
    """A message's content as text: a string, or the text parts of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict) and p.get("type") == "text")
    return ""
