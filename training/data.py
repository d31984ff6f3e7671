"""Prepared splits to token rows, done once before the workers start, as materialised Ray Datasets.

Up to IN_PROCESS_MAX_ROWS rows (most fine-tuning sets), the Parquet files are read with pyarrow and
tokenized in this process, where the tokenizer is loaded already. Above that, all splits go through
one pipeline of Ray tasks, each task process loading the tokenizer once (`load_tokenizer` is cached
per process). Measured here: 520 ticket rows took 7 s as Ray tasks in a cluster whose idle task
processes had been replaced meanwhile (a fresh one imports transformers and loads the tokenizer, 4 s
of it), and 0.2 s in this process; both ways give the same rows (tests/test_training.py).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

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


IN_PROCESS_MAX_ROWS = 20_000  # rows of all splits together tokenized in this process, not as Ray tasks


@dataclass(frozen=True)
class TokenSplits:
    """Each split's token rows (a materialised Ray Dataset), its row count, and the train split's tokens."""

    datasets: dict
    rows: dict[str, int]
    train_tokens: int


def tokenized_splits(
    dataset_dir: str,
    splits: list[str],
    tokenizer_path: str,
    chat_template: str | None,
    max_seq_len: int,
    pairs: bool = False,
) -> TokenSplits:
    """The named splits of a prepared dataset as token rows (rows with no learned token, or with
    `pairs` a side without one, dropped): in this process up to IN_PROCESS_MAX_ROWS rows, else in
    one Ray Data pipeline."""
    paths = [storage.join(dataset_dir, f"{split}.parquet") for split in splits]
    for path in paths:
        if not storage.exists(path):
            raise FileNotFoundError(f"{path} not found: run `rayft data prepare` first")
    files = [storage.parquet_file(path) for path in paths]
    names = files[0].schema_arrow.names
    read = ["messages"] + [c for c in ("tools",) + (("rejected",) if pairs else ()) if c in names]
    tokenizing = {
        "tokenizer_path": tokenizer_path,
        "chat_template": chat_template,
        "max_seq_len": max_seq_len,
        "pairs": pairs,
    }
    columns = PAIR_COLUMNS if pairs else SFT_COLUMNS
    if sum(file.metadata.num_rows for file in files) <= IN_PROCESS_MAX_ROWS:
        return _tokenized_here(files, paths, read, splits, tokenizing, columns)
    return _tokenized_as_ray_tasks(paths, read, splits, tokenizing, columns)


def _tokenized_here(files, paths: list[str], read: list[str], splits, tokenizing: dict, columns) -> TokenSplits:
    import ray

    datasets, counts, train_tokens = {}, {}, 0
    for split, file, path in zip(splits, files, paths):
        rows = file.read(columns=read)
        rows = rows.append_column("path", pa.array([path] * rows.num_rows, pa.string()))
        table = pa.table(tokenize_batch(rows, **tokenizing))
        table = table.filter(pc.greater(table["n_labels"], 0)).select(columns) if table.num_rows else table
        datasets[split], counts[split] = ray.data.from_arrow(table), table.num_rows
        if split == "train" and table.num_rows:
            train_tokens = int(pc.sum(table["length"]).as_py())
    return TokenSplits(datasets, counts, train_tokens)


def _tokenized_as_ray_tasks(paths: list[str], read: list[str], splits, tokenizing: dict, columns) -> TokenSplits:
    import ray
    from ray.data.expressions import col

    rows = ray.data.read_parquet(paths, include_paths=True).select_columns(read + ["path"])
    tokens = (
        rows.map_batches(tokenize_batch, fn_kwargs=tokenizing, batch_format="pyarrow", batch_size=256, concurrency=2)
        .filter(expr=col("n_labels") > 0)
        .materialize()
    )
    datasets = {
        split: tokens.filter(expr=col("split") == split).select_columns(columns).materialize() for split in splits
    }
    counts = {split: dataset.count() for split, dataset in datasets.items()}
    train_tokens = int(datasets["train"].sum("length") or 0) if counts.get("train") else 0
    return TokenSplits(datasets, counts, train_tokens)
