"""Checking data files in one process, without Ray: every record validated as `rayft data prepare`
validates it (`records.CleanRecords`; a dataset mixing SFT records and preference pairs keeps the more
numerous kind, `preference.winning_kind`), each reject named by file, line and reason, the kept
records' tokens counted. The fine-tuning API checks an uploaded file this way before it queues a job, and
`rayft estimate` counts what a run would train on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rayft import storage
from rayft.config import DataConfig
from rayft.data.preference import KINDS, mixed_kinds, winning_kind
from rayft.data.records import CleanRecords
from rayft.data.sources import expand_inputs, file_records

BATCH = 512  # records tokenized together


@dataclass
class RejectedRecord:
    source: str
    line: int
    reason: str
    message: str

    def public(self) -> dict:
        """As shown to whoever uploaded the file: its name, not where the server keeps it."""
        return {"file": Path(self.source).name, "line": self.line, "reason": self.reason, "message": self.message}

    def __str__(self) -> str:
        return f"{Path(self.source).name} line {self.line}: {self.reason} ({self.message})"


@dataclass
class DataCheck:
    """What a set of files holds: records, the ones kept and their kind ('sft' or 'preference'),
    their tokens (rendered with the chat template; a pair's longer conversation), and every reject."""

    kind: str = "sft"
    records: int = 0
    kept: int = 0
    tokens: int = 0
    rejects: list[RejectedRecord] = field(default_factory=list)

    def rejects_summary(self, most: int = 5) -> str:
        """'N of M records cannot be used: <the first `most`>; ...'."""
        shown = "; ".join(str(r) for r in self.rejects[:most])
        more = f"; and {len(self.rejects) - most} more" if len(self.rejects) > most else ""
        return f"{len(self.rejects)} of {self.records} records cannot be used: {shown}{more}"


def count_records(path: str) -> int:
    """Records in one data file (JSONL lines, JSON array items, table rows), none validated."""
    return len(file_records(path, Path(path).read_bytes()))


def check_files(
    inputs: list[str], data: DataConfig, tokenizer: str | None, chat_template: str | None = None
) -> DataCheck:
    """Validate and count every record of `inputs` (files or folders) as data prepare would, before
    deduplication and splitting."""
    cleaner = CleanRecords(data, tokenizer, chat_template)
    outcomes = []  # (source, line, reject, kind, tokens) of every record
    for source in expand_inputs(inputs):
        rows = file_records(source, storage.read_bytes(source))
        for start in range(0, len(rows), BATCH):
            batch = rows[start : start + BATCH]
            for (line, _), row in zip(batch, cleaner.checked([raw for _, raw in batch])):
                outcomes.append((source, line, row["reject"], row.get("kind"), row.get("n_tokens", 0)))
    found = {kind: sum(1 for *_, reject, k, _ in outcomes if reject is None and k == kind) for kind in KINDS}
    check = DataCheck(kind=winning_kind(found), records=len(outcomes))
    for source, line, reject, kind, tokens in outcomes:
        if reject is None and kind == check.kind:
            check.kept += 1
            check.tokens += tokens
        else:
            reject = reject or mixed_kinds(found, check.kind)
            check.rejects.append(RejectedRecord(source, line, reject.reason, reject.message))
    return check
