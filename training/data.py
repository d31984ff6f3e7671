"""Prepared splits to token rows on Ray Data, done once on the cluster before the workers start.

All splits go through one pipeline of Ray tasks. Each task process loads the tokenizer once and
keeps it (`load_tokenizer` is cached per process), and Ray reuses idle task processes, so later
runs in the same cluster skip the transformers import and the tokenizer load.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pyarrow as pa

from rayft import storage


@lru_cache(maxsize=4)
def load_tokenizer(path: str, chat_template: str | None):
    """The model's tokenizer (with `chat_template` when given) and a pad token; cached per process."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    if chat_template:
        tokenizer.chat_template = chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


SFT_COLUMNS = ["input_ids", "labels", "length", "n_labels"]
PAIR_COLUMNS = ["chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels", "length", "n_labels"]


def _learned(labels: list[int]) -> int:
    return sum(1 for x in labels if x != -100)


def tokenize_batch(
    batch: pa.Table, tokenizer_path: str, chat_template: str | None, max_seq_len: int, pairs: bool
) -> dict:
    """Ray Data UDF: `messages` rows to `input_ids`/`labels` with the model's chat template, or with
    `pairs` each row's chosen and rejected replies to a pair of token rows (`tokenize_pair`);
    `split` names the file each row came from."""
    from rayft.training.formatting import tokenize_conversation, tokenize_pair

    tokenizer = load_tokenizer(tokenizer_path, chat_template)
    tools = batch.column("tools").to_pylist() if "tools" in batch.schema.names else [None] * batch.num_rows
    tools = [json.loads(t) if t else None for t in tools]
    split = [Path(p).stem for p in batch.column("path").to_pylist()]
    if not pairs:
        rows = [
            tokenize_conversation(tokenizer, m, max_seq_len, t) for m, t in zip(_messages(batch, "messages"), tools)
        ]
        return {
            "split": split,
            "input_ids": [r["input_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
            "length": [len(r["input_ids"]) for r in rows],
            "n_labels": [_learned(r["labels"]) for r in rows],
        }
    rejected = _messages(batch, "rejected")
    rows = [
        tokenize_pair(tokenizer, m, r[0], max_seq_len, t)
        for m, r, t in zip(_messages(batch, "messages"), rejected, tools)
    ]
    return (
        {"split": split}
        | {column: [r[column] for r in rows] for column in PAIR_COLUMNS[:4]}
        | {
            "length": [len(r["chosen_input_ids"]) + len(r["rejected_input_ids"]) for r in rows],
            "n_labels": [min(_learned(r["chosen_labels"]), _learned(r["rejected_labels"])) for r in rows],
        }
    )


def _messages(batch: pa.Table, column: str) -> list[list[dict]]:
    out = []
    for conversation in batch.column(column).to_pylist():
        out.append([{k: v for k, v in m.items() if v is not None} for m in conversation])
    return out


def tokenized_splits(
    dataset_dir: str,
    splits: list[str],
    tokenizer_path: str,
    chat_template: str | None,
    max_seq_len: int,
    pairs: bool = False,
) -> dict:
    """The named splits of a prepared dataset as materialised token rows (rows with no learned
    token, or with `pairs` a side without one, dropped), tokenized in one Ray Data pipeline."""
    import ray
    from ray.data.expressions import col

    paths = [storage.join(dataset_dir, f"{split}.parquet") for split in splits]
    for path in paths:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} not found: run `rayft data prepare` first")
    rows = ray.data.read_parquet(paths, include_paths=True)
    optional = [c for c in ("tools",) + (("rejected",) if pairs else ()) if c in rows.schema().names]
    rows = rows.select_columns(["messages", "path"] + optional)
    tokens = (
        rows.map_batches(
            tokenize_batch,
            fn_kwargs={
                "tokenizer_path": tokenizer_path,
                "chat_template": chat_template,
                "max_seq_len": max_seq_len,
                "pairs": pairs,
            },
            batch_format="pyarrow",
            batch_size=256,
            concurrency=2,
        )
        .filter(expr=col("n_labels") > 0)
        .materialize()
    )
    columns = PAIR_COLUMNS if pairs else SFT_COLUMNS
    return {split: tokens.filter(expr=col("split") == split).select_columns(columns).materialize() for split in splits}
