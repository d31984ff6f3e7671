"""`rayft review prepare NAME:VERSION`: what reviewers will judge, as review items (`rayft.feedback`).

setup   the version, its eval report (which must be about these exact weights), and the other side:
        the version its gated alias pointed at when it was evaluated (default), the base or the
        few-shot base
run     pairwise items from the eval's own answers (answers.jsonl in the report folder): the same
        test prompts and greedy decoding the metrics and the gate saw, so what people judge is what
        was evaluated; or, with `--source traffic`, single answers the version served (sampled
        traffic, already scrubbed of PII) for a 1–5 rating
report  how many items were added (an item already there is kept once)
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from rayft import storage
from rayft.eval.results import EvalReport
from rayft.feedback import Answer, FeedbackStore
from rayft.registry import ModelVersion, Registry, RegistryError


@dataclass
class PreparedItems:
    candidate: str
    against: str | None
    source: str
    added: int
    offered: int


def eval_report_of(version: ModelVersion) -> EvalReport:
    """The version's eval report, refused unless it was made with these exact weights."""
    if not version.eval_report:
        raise RegistryError(f"{version.ref} has no eval report: run `rayft eval CONFIG --model {version.ref}` first")
    report = EvalReport.from_record(version.eval_report)
    if report.weights_hash != version.weights_hash or not report.folder:
        raise RegistryError(f"{version.ref}'s eval report is not about its registered weights: evaluate it again")
    return report


def base_hash(registry: Registry, base: str) -> str | None:
    """The weights hash of a base model: its registry version's, or the content hash of a local folder."""
    registered = registry.find_by_artifact(base)
    if registered:
        return registered.weights_hash
    return storage.content_hash(base) if Path(base).is_dir() else None


def other_side(registry: Registry, report: EvalReport, against: str | None) -> tuple[str, Answer]:
    """(answers.jsonl column, the other side's ref and hash) for `against`: an alias the eval compared
    (default: the first, else the base), `base`, or `few_shot`."""
    against = against or next(iter(report.compared), "base")
    if against in ("base", "few_shot"):
        if against not in report.metrics:
            raise RegistryError(f"the eval of {report.candidate} ran without {against}")
        label = report.base_model if against == "base" else f"{report.base_model} (few-shot)"
        return f"output:{against}", Answer(label, base_hash(registry, report.base_model), "")
    compared = report.compared.get(against) or next((c for c in report.compared.values() if c.ref == against), None)
    if compared is None:
        known = ", ".join(["base", "few_shot", *report.compared]) if report.compared else "base, few_shot"
        raise RegistryError(f"the eval of {report.candidate} did not answer beside {against!r}; choose {known}")
    return f"output:{compared.ref}", Answer(compared.ref, compared.weights_hash, "")


def answered_rows(report: EvalReport) -> list[dict]:
    """The eval's answered test rows, in order."""
    text = storage.read_bytes(storage.join(report.folder, "answers.jsonl")).decode("utf-8")
    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    return [row for row in rows if row.get("set", "test") == "test"]


def shown_prompt(prompt: str | list) -> list[dict]:
    """A prompt's turns as reviewers see them: role and content only."""
    turns = json.loads(prompt) if isinstance(prompt, str) else prompt
    return [{"role": t["role"], "content": t["content"]} for t in turns]


def pairs_from_eval(
    registry: Registry, store: FeedbackStore, ref: str, against: str | None = None, limit: int | None = None
) -> PreparedItems:
    """Pairwise items: the candidate's and the other side's answers to the eval's test prompts."""
    version = registry.get(ref)
    report = eval_report_of(version)
    column, other = other_side(registry, report, against)
    mine = Answer(version.ref, version.weights_hash, "")
    items = []
    for row in answered_rows(report)[:limit]:
        if row.get("output:candidate") is None or row.get(column) is None:
            continue
        answers = [
            Answer(mine.ref, mine.weights_hash, row["output:candidate"]),
            Answer(other.ref, other.weights_hash, row[column]),
        ]
        items.append((shown_prompt(row["prompt"]), answers, row.get("answer")))
    added = store.add_items(version.name, version.ref, "test", items, project=version.project)
    return PreparedItems(version.ref, other.ref, "test", added, len(items))


def traffic_records(folder: Path) -> list[dict]:
    """Every sampled record in a version's traffic folder (one JSONL file per day), oldest first."""
    records = []
    for path in sorted(folder.glob("*.jsonl")):
        records += [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return records


def singles_from_traffic(
    registry: Registry, store: FeedbackStore, ref: str, traffic: Path, limit: int | None = None, seed: int = 0
) -> PreparedItems:
    """Single-answer items: what the version answered in sampled traffic, `limit` picked at random."""
    version = registry.get(ref)
    records = [
        r
        for r in traffic_records(traffic / version.name / str(version.version))
        if r.get("weights_hash") == version.weights_hash
    ]
    if limit and len(records) > limit:
        records = random.Random(seed).sample(records, limit)
    added = 0
    for project in sorted({r.get("project") for r in records}, key=str):  # each record is its asker's project's
        items = [
            (
                shown_prompt(r["messages"][:-1]),
                [Answer(version.ref, version.weights_hash, r["messages"][-1]["content"])],
                None,
            )
            for r in records
            if r.get("project") == project
        ]
        added += store.add_items(version.name, version.ref, "traffic", items, project=project)
    return PreparedItems(version.ref, None, "traffic", added, len(records))
