"""Writing a prepared dataset: the three splits, the reject file, stats, a token-length histogram.

Splits are written in input order from a streaming iterator, so memory stays bounded, and the
dataset hash is computed over what is written (each split's rows in order: messages with their
weights, a preference pair's rejected reply, and labels): the same records and config give the
same hash whatever the cluster size.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from rayft.data.manifest import Counts
from rayft.data.records import NO_LABEL

SPLITS = ("train", "val", "test")
CALL_TYPE = pa.struct(
    [
        ("id", pa.string()),
        ("type", pa.string()),
        ("function", pa.struct([("name", pa.string()), ("arguments", pa.string())])),
    ]
)
MESSAGE_TYPE = pa.list_(
    pa.struct(
        [
            ("role", pa.string()),
            ("content", pa.string()),  # null on an assistant turn that only calls tools
            ("weight", pa.int8()),
            ("tool_calls", pa.list_(CALL_TYPE)),
            ("tool_call_id", pa.string()),
        ]
    )
)
SPLIT_SCHEMA = pa.schema(
    [
        ("messages", MESSAGE_TYPE),  # a preference pair's: the prompt, then the preferred reply
        ("rejected", MESSAGE_TYPE),  # a preference pair's one non-preferred reply; null for other records
        ("tools", pa.string()),  # the record's tools as OpenAI's JSON (a JSON Schema each); null: none
        ("label", pa.string()),
        ("n_tokens", pa.int32()),
        ("source", pa.string()),
        ("line", pa.int64()),
    ]
)


def write_rejects(removed, path: Path) -> dict[str, int]:
    """Every removed record (invalid, duplicate, leaked) in input order; returns counts per reason."""
    reasons: dict[str, int] = {}
    with path.open("w", encoding="utf-8") as out:
        for batch in removed.sort("order").iter_batches(batch_format="pandas", batch_size=1024):
            for row in batch.to_dict("records"):
                reasons[row["reason"]] = reasons.get(row["reason"], 0) + 1
                entry = {
                    "source": row["source"],
                    "line": int(row["line"]),
                    "reason": row["reason"],
                    "message": row["message"],
                    "record": row["record"],
                }
                if row["duplicate_of"]:
                    entry["duplicate_of"] = json.loads(row["duplicate_of"])
                    entry["similarity"] = round(float(row["similarity"]), 4)
                out.write(json.dumps(entry, ensure_ascii=False) + "\n")
    return dict(sorted(reasons.items()))


def row_identity(messages_json: str, label: str | None, tools_json: str = "", rejected_json: str = "") -> bytes:
    """What a written row contributes to the dataset hash: its messages (roles, contents, tool
    calls and per-message weights, as validated), a preference pair's rejected reply, its tools and
    its label. Provenance (source, line) is left out, so the same records read from a renamed file
    are the same version, and so is n_tokens, which the messages and the tokenizer determine."""
    tools = f"\t{tools_json}" if tools_json else ""  # a record without tools hashes as it always did
    rejected = f"\trejected\t{rejected_json}" if rejected_json else ""  # and so does one that is no pair
    return f"{json.dumps(label)}\t{messages_json}{tools}{rejected}\n".encode()


def write_splits(assigned, out_dir: Path) -> tuple[dict[str, int], str, dict]:
    """Write train/val/test.parquet in input order (one pass); returns counts, the content hash and
    stats."""
    digests = {name: hashlib.sha256() for name in SPLITS}
    counts = {name: 0 for name in SPLITS}
    labels: dict[str, dict] = {name: {} for name in SPLITS}
    lengths: dict[str, list] = {name: [] for name in SPLITS}
    calls = {"records_with_tools": 0, "double_encoded_arguments": 0}
    writers = {name: pq.ParquetWriter(out_dir / f"{name}.parquet", SPLIT_SCHEMA) for name in SPLITS}
    try:
        for batch in assigned.sort("order").iter_batches(batch_format="pandas", batch_size=4096):
            for name, part in batch.groupby("split"):
                labels_out = [None if x == NO_LABEL else x for x in part["label"]]
                for text, label, tools, rejected in zip(part["messages"], labels_out, part["tools"], part["rejected"]):
                    digests[name].update(row_identity(text, label, tools, rejected))
                calls["records_with_tools"] += int((part["tools"] != "").sum())
                calls["double_encoded_arguments"] += int(part["double_encoded"].sum())
                writers[name].write_table(
                    pa.table(
                        {
                            "messages": pa.array([json.loads(m) for m in part["messages"]], MESSAGE_TYPE),
                            "rejected": pa.array(
                                [json.loads(r) if r else None for r in part["rejected"]], MESSAGE_TYPE
                            ),
                            "tools": pa.array([t or None for t in part["tools"]], pa.string()),
                            "label": pa.array(labels_out, pa.string()),
                            "n_tokens": pa.array(part["n_tokens"], pa.int32()),
                            "source": pa.array(part["source"], pa.string()),
                            "line": pa.array(part["line"], pa.int64()),
                        },
                        schema=SPLIT_SCHEMA,
                    )
                )
                counts[name] += len(part)
                lengths[name].extend(int(n) for n in part["n_tokens"])
                for label in part["label"]:
                    labels[name][label] = labels[name].get(label, 0) + 1
    finally:
        for writer in writers.values():
            writer.close()
    digest = hashlib.sha256("".join(f"[{name}]{digests[name].hexdigest()}" for name in SPLITS).encode())
    stats = {
        "labels": {k: dict(sorted(v.items())) for k, v in labels.items() if set(v) - {NO_LABEL}},
        "tokens": {k: length_stats(v) for k, v in lengths.items()},
    } | ({"tool_calls": calls} if calls["records_with_tools"] else {})
    return counts, digest.hexdigest(), stats | {"_lengths": lengths}


def length_stats(lengths: list[int]) -> dict:
    if not lengths:
        return {"count": 0}
    values = np.asarray(lengths)
    return {
        "count": int(values.size),
        "min": int(values.min()),
        "mean": round(float(values.mean()), 1),
        "p50": int(np.percentile(values, 50)),
        "p95": int(np.percentile(values, 95)),
        "max": int(values.max()),
    }


def warnings_for(counts: Counts, stats: dict, min_class: int, min_records: int, tokenizer: str | None) -> list[str]:
    """Data-quality warnings a person should read before training."""
    warnings = []
    if tokenizer is None:
        warnings.append(
            "no tokenizer given (--tokenizer, or a config's model.base): token lengths and max_tokens "
            "count whitespace-separated words, not the model's tokens"
        )
    if counts.kept < min_records:
        warnings.append(f"only {counts.kept} records kept; fine-tuning usually needs {min_records} or more")
    totals: dict[str, int] = {}
    for split_labels in stats.get("labels", {}).values():
        for label, n in split_labels.items():
            totals[label] = totals.get(label, 0) + n
    for label, n in sorted(totals.items()):
        if n < min_class:
            warnings.append(f"class {label!r} has only {n} examples (fewer than {min_class})")
    twice = stats.get("tool_calls", {}).get("double_encoded_arguments", 0)
    if twice:
        warnings.append(
            f"double_encoded_arguments: {twice} tool calls' arguments are a JSON string holding JSON (encoded "
            "twice); the model will learn to answer so. Decode them once in the file if that is not intended"
        )
    return warnings


def plot_token_lengths(lengths: dict[str, list[int]], path: Path, limit: int) -> Path:
    """A histogram of token lengths per split, with the configured limit marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    values = [v for v in lengths.values() if v]
    top = max((max(v) for v in values), default=1)
    bins = np.linspace(0, max(top, 1), 40)
    for name, split_lengths in lengths.items():
        if split_lengths:
            axis.hist(split_lengths, bins=bins, alpha=0.6, label=f"{name} ({len(split_lengths)})")
    if limit <= top * 1.5:
        axis.axvline(limit, color="red", linestyle="--", label=f"max_tokens {limit}")
    axis.set_xlabel("tokens per record")
    axis.set_ylabel("records")
    if axis.get_legend_handles_labels()[0]:  # nothing kept and no limit drawn: no legend
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path
