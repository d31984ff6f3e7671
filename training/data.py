"""Prepared splits to token rows on Ray Data, done once on the cluster before the workers start."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa


class TokenizeConversations:
    """Ray Data UDF: `messages` rows to `input_ids`/`labels` with the model's chat template."""

    def __init__(self, tokenizer_path: str, chat_template: str | None, max_seq_len: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
        if chat_template:
            self.tokenizer.chat_template = chat_template
        self.max_seq_len = max_seq_len

    def __call__(self, batch: pa.Table) -> dict[str, list]:
        from rayft.training.formatting import tokenize_conversation

        rows = [tokenize_conversation(self.tokenizer, m, self.max_seq_len) for m in _messages(batch)]
        return {
            "input_ids": [r["input_ids"] for r in rows],
            "labels": [r["labels"] for r in rows],
            "length": [len(r["input_ids"]) for r in rows],
            "n_labels": [sum(1 for x in r["labels"] if x != -100) for r in rows],
        }


def _messages(batch: pa.Table) -> list[list[dict]]:
    out = []
    for conversation in batch.column("messages").to_pylist():
        out.append([{k: v for k, v in m.items() if v is not None} for m in conversation])
    return out


def tokenized_split(dataset_dir: Path, split: str, tokenizer_path: str, chat_template: str | None, max_seq_len: int):
    """One split of a prepared dataset as materialised token rows (rows with no label dropped)."""
    import ray
    from ray.data.expressions import col

    path = dataset_dir / f"{split}.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `rayft data prepare` first")
    rows = ray.data.read_parquet(str(path)).select_columns(["messages"]).map_batches(
        TokenizeConversations,
        fn_constructor_args=(tokenizer_path, chat_template, max_seq_len),
        batch_format="pyarrow",
        batch_size=256,
        concurrency=(1, 2),
    )
    return rows.filter(expr=col("n_labels") > 0).materialize()
