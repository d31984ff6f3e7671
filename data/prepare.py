"""`rayft data prepare`: raw files in, clean versioned train/val/test splits out, nothing lost.

setup   resolve inputs and options, start Ray
run     read → validate (reject file with source, line, reason) → split (seeded, stratified)
report  write the splits and rejects, the manifest with counts and a content hash, print a summary

Every input record ends in exactly one place: a split or `rejects.jsonl`. The manifest's counts
satisfy `input == kept + rejected` and `kept == train + val + test`.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from ray.data.expressions import col

from rayft.config import DataConfig
from rayft.data import sources, split
from rayft.data.validate import Reject, decode_line, normalise
from rayft.runtime import ensure_ray

MESSAGE_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string()), ("weight", pa.int8())]))
SPLIT_SCHEMA = pa.schema([
    ("messages", MESSAGE_TYPE),
    ("label", pa.string()),
    ("n_tokens", pa.int32()),
    ("source", pa.string()),
    ("line", pa.int64()),
])
NO_LABEL = "__all__"


@dataclass
class PrepareOptions:
    """What `prepare_dataset` needs besides the inputs: the data config and a tokenizer."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: str | None = None  # a model folder or hub id; token limits and stats need it


def text_hash(messages: list[dict]) -> str:
    """Hash of a conversation's normalised text (case and whitespace folded)."""
    text = "\n".join(f"{m['role']}: {' '.join(m['content'].lower().split())}" for m in messages)
    return hashlib.sha256(text.encode()).hexdigest()


class ValidateRecords:
    """Ray Data UDF: raw records to validated rows (status 'ok' or 'rejected', with a reason)."""

    def __init__(self, options: PrepareOptions):
        self.data = options.data
        self.label_regex = re.compile(self.data.label_regex) if self.data.label_regex else None
        self.tokenizer = None
        if options.tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(options.tokenizer)

    def label_of(self, record: object, messages: list[dict]) -> str:
        if self.data.label_field:
            value = record.get(self.data.label_field) if isinstance(record, dict) else None
            if value is None:
                raise Reject("missing_label", f"record has no label field {self.data.label_field!r}")
            return str(value)
        if self.label_regex:
            match = self.label_regex.search(messages[-1]["content"])
            if not match:
                raise Reject("missing_label", f"label_regex {self.label_regex.pattern!r} does not match the answer")
            return match.group(1)
        return NO_LABEL

    def count_tokens(self, conversations: list[list[dict]]) -> list[int]:
        if self.tokenizer is None:
            return [sum(len(m["content"].split()) for m in c) for c in conversations]
        texts = [self.tokenizer.apply_chat_template(c, tokenize=False) for c in conversations]
        return [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]]

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        rows = []
        for raw in batch["raw"]:
            try:
                record = decode_line(bytes(raw))
                messages = normalise(record, self.data.format)
                rows.append({"messages": messages, "label": self.label_of(record, messages), "reject": None})
            except Reject as reject:
                rows.append({"messages": None, "label": "", "reject": reject})
        ok = [r for r in rows if r["reject"] is None]
        for row, n in zip(ok, self.count_tokens([r["messages"] for r in ok])):
            row["n_tokens"] = n
            if n > self.data.max_tokens:
                row["reject"] = Reject("too_many_tokens", f"{n} tokens > max_tokens {self.data.max_tokens}")
        return {
            "source": batch["source"],
            "line": batch["line"],
            "order": batch["order"],
            "status": ["rejected" if r["reject"] else "ok" for r in rows],
            "reason": [r["reject"].reason if r["reject"] else "" for r in rows],
            "message": [r["reject"].message if r["reject"] else "" for r in rows],
            "record": [bytes(raw).decode("utf-8", "replace") if r["reject"] else "" for r, raw in zip(rows, batch["raw"])],
            "messages": [json.dumps(r["messages"], ensure_ascii=False) if not r["reject"] else "" for r in rows],
            "label": [r["label"] for r in rows],
            "stratum": [r["label"] for r in rows],
            "n_tokens": [r.get("n_tokens", 0) for r in rows],
            "text_hash": [text_hash(r["messages"]) if not r["reject"] else "" for r in rows],
        }


def validate(records, options: PrepareOptions):
    """Validated rows, materialised so the split and the rejects read them once."""
    return records.map_batches(
        ValidateRecords, fn_constructor_args=(options,), batch_size=512, concurrency=(1, 2)
    ).materialize()


def write_rejects(rejected, path: Path) -> dict[str, int]:
    """Write rejects.jsonl in input order; returns counts per reason."""
    reasons: dict[str, int] = {}
    with path.open("w", encoding="utf-8") as out:
        for batch in rejected.sort("order").iter_batches(batch_format="pandas", batch_size=1024):
            for row in batch.itertuples(index=False):
                reasons[row.reason] = reasons.get(row.reason, 0) + 1
                out.write(json.dumps(
                    {"source": row.source, "line": int(row.line), "reason": row.reason,
                     "message": row.message, "record": row.record},
                    ensure_ascii=False,
                ) + "\n")
    return dict(sorted(reasons.items()))


def write_splits(assigned, out_dir: Path) -> tuple[dict[str, int], str, dict]:
    """Write train/val/test.parquet in input order; returns counts, the content hash and stats."""
    digest = hashlib.sha256()
    counts, labels, lengths = {}, {}, {}
    for name in split.SPLITS:
        subset = assigned.filter(expr=col("split") == name).sort("order")
        counts[name], labels[name], lengths[name] = 0, {}, []
        digest.update(f"\n[{name}]\n".encode())
        with pq.ParquetWriter(out_dir / f"{name}.parquet", SPLIT_SCHEMA) as writer:
            for batch in subset.iter_batches(batch_format="pandas", batch_size=2048):
                messages = [json.loads(m) for m in batch["messages"]]
                for text in batch["messages"]:
                    digest.update(text.encode() + b"\n")
                table = pa.table({
                    "messages": pa.array(messages, MESSAGE_TYPE),
                    "label": pa.array([None if x == NO_LABEL else x for x in batch["label"]], pa.string()),
                    "n_tokens": pa.array(batch["n_tokens"], pa.int32()),
                    "source": pa.array(batch["source"], pa.string()),
                    "line": pa.array(batch["line"], pa.int64()),
                }, schema=SPLIT_SCHEMA)
                writer.write_table(table)
                counts[name] += len(batch)
                lengths[name].extend(int(n) for n in batch["n_tokens"])
                for label in batch["label"]:
                    labels[name][label] = labels[name].get(label, 0) + 1
    stats = {
        "labels": {k: dict(sorted(v.items())) for k, v in labels.items() if set(v) != {NO_LABEL}},
        "tokens": {k: _length_stats(v) for k, v in lengths.items()},
    }
    return counts, digest.hexdigest(), stats


def _length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    values = np.asarray(lengths)
    return {
        "count": int(values.size), "min": int(values.min()), "mean": round(float(values.mean()), 1),
        "p50": int(np.percentile(values, 50)), "p95": int(np.percentile(values, 95)), "max": int(values.max()),
    }


def prepare_dataset(inputs: list[str], out_dir: str | Path, options: PrepareOptions | None = None) -> dict:
    """Prepare `inputs` into `out_dir`; returns the manifest (also written as manifest.json)."""
    # setup
    options = options or PrepareOptions()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    ensure_ray()
    records = sources.read_records(inputs)

    # run
    validated = validate(records, options)
    rejected = validated.filter(expr=col("status") == "rejected")
    kept = validated.filter(expr=col("status") == "ok")
    fractions = options.data.split.model_dump()
    assigned = split.assign_splits(kept, fractions, options.data.seed).materialize()

    # report
    reasons = write_rejects(rejected, out_dir / "rejects.jsonl")
    counts, dataset_hash, stats = write_splits(assigned, out_dir)
    n_rejected = sum(reasons.values())
    kept_count = sum(counts.values())
    manifest = {
        "dataset_hash": dataset_hash,
        "counts": {"input": kept_count + n_rejected, "kept": kept_count, "rejected": n_rejected, **counts},
        "rejects_by_reason": reasons,
        "inputs": sources.resolve_inputs(inputs),
        "config": options.data.model_dump(),
        "tokenizer": options.tokenizer,
        "stats": stats,
    }
    input_count = validated.count()
    if manifest["counts"]["input"] != input_count:
        raise RuntimeError(f"records lost: read {input_count}, accounted for {manifest['counts']['input']}")
    (out_dir / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest
