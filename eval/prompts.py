"""What the models are asked: the test split, the forgetting set and the few-shot examples.

Every record becomes a row with `set` ("test" or "forgetting"), `prompt` (the conversation without
its last assistant answer, as JSON), `answer` (that reference answer), `expected` (the forgetting
set's key answer; "" for test rows), `tools` (the record's tools as JSON; "" for none), and `chosen`
and `rejected` (a preference pair's two replies to the prompt, each the whole assistant message as
JSON; "" for a record that is no pair). A record that calls tools is asked for its first call: the
prompt is the conversation before that turn, the answer the calls it makes (`[{"name", "arguments"}]`
as JSON). A pair is asked its last turn: the prompt is every turn before the preferred reply, the
answer that reply (its calls, as above, when it makes some). The few-shot base sees the same prompts
with k training examples placed as earlier turns of the conversation.
"""

from __future__ import annotations

import json
import random
from importlib import resources
from pathlib import Path

import pyarrow as pa

from rayft import storage

ROW_COLUMNS = ("set", "prompt", "answer", "expected", "tools", "chosen", "rejected")


def _clean(conversation: list[dict]) -> list[dict]:
    """Parquet gives every message every key; drop the ones a record did not have."""
    return [{k: v for k, v in m.items() if v is not None} for m in conversation]


def answer_text(message: dict) -> str:
    """An assistant turn as the reference answer: its calls (`[{"name", "arguments"}]` as JSON) when
    it makes some, else its text."""
    if not message.get("tool_calls"):
        return message["content"]
    calls = [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]} for c in message["tool_calls"]]
    return json.dumps(calls, ensure_ascii=False)


def _column(batch: pa.Table, name: str) -> list:
    return batch.column(name).to_pylist() if name in batch.schema.names else [None] * batch.num_rows


def split_prompt(batch: pa.Table) -> dict[str, list]:
    """Ray Data UDF: conversations to eval rows (prompt = all turns but the last assistant answer,
    or those before the first call; a pair's: all turns but its preferred reply)."""
    out = {name: [] for name in ("prompt", "answer", "chosen", "rejected")}
    for conversation, rejected in zip(_column(batch, "messages"), _column(batch, "rejected")):
        messages = _clean(conversation)
        calling = next((i for i, m in enumerate(messages) if m.get("tool_calls")), None)
        asked = len(messages) - 1 if rejected or calling is None else calling
        out["prompt"].append(json.dumps(messages[:asked], ensure_ascii=False))
        out["answer"].append(answer_text(messages[asked]))
        out["chosen"].append(json.dumps(messages[-1], ensure_ascii=False) if rejected else "")
        out["rejected"].append(json.dumps(_clean(rejected)[0], ensure_ascii=False) if rejected else "")
    n = batch.num_rows
    return {"set": ["test"] * n, **out, "expected": [""] * n, "tools": [t or "" for t in _column(batch, "tools")]}


def read_test_split(dataset_dir: str, limit: int | None):
    """The prepared test split (a local path or URI) as eval rows, on Ray Data."""
    import ray

    path = storage.join(dataset_dir, "test.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: run `rayft data prepare` first")
    rows = ray.data.read_parquet(path)
    rows = rows.select_columns(["messages"] + [c for c in ("tools", "rejected") if c in rows.schema().names])
    if limit:
        rows = rows.limit(limit)
    return rows.map_batches(split_prompt, batch_format="pyarrow")


def holds_pairs(dataset_dir: str) -> bool:
    """Whether the prepared test split holds preference pairs (rows with a rejected reply)."""
    path = storage.join(dataset_dir, "test.parquet")
    if not storage.exists(path):
        return False
    file = storage.parquet_file(path)
    if "rejected" not in file.schema_arrow.names:
        return False
    return file.read(columns=["rejected"]).column("rejected").null_count < file.metadata.num_rows


def forgetting_records(path: str | None) -> list[dict]:
    """The forgetting set as eval rows: `path`, or the general-purpose set rayft ships
    (`eval/forgetting.jsonl`). Each line is {"messages": [..., assistant answer], "expected": "..."};
    a bad line raises ValueError naming the file and line."""
    source = Path(path) if path else resources.files("rayft.eval") / "forgetting.jsonl"
    rows = []
    for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{source}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise ValueError(f"{where}: not valid JSON: {error}") from None
        messages, expected = record.get("messages"), record.get("expected")
        if not (
            isinstance(messages, list)
            and messages
            and isinstance(messages[-1], dict)
            and messages[-1].get("role") == "assistant"
        ):
            raise ValueError(f"{where}: 'messages' must be a conversation ending with the assistant's answer")
        if not isinstance(expected, str) or not expected.strip():
            raise ValueError(f"{where}: 'expected' must be the non-empty answer the output has to contain")
        rows.append(
            {
                "set": "forgetting",
                "prompt": json.dumps(messages[:-1], ensure_ascii=False),
                "answer": messages[-1]["content"],
                "expected": expected,
                "tools": "",
                "chosen": "",
                "rejected": "",
            }
        )
    if not rows:
        raise ValueError(f"{source}: the forgetting set is empty")
    return rows


def few_shot_examples(dataset_dir: str, k: int, seed: int, label=None) -> list[list[dict]]:
    """`k` conversations drawn (seeded) from the training split; when `label(answer)` is given, the
    draw covers as many different labels as it can before repeating one."""
    if k == 0:
        return []
    path = storage.join(dataset_dir, "train.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path} not found: the few-shot base draws its examples from the training split")
    table = storage.parquet_file(path).read(columns=["messages"])
    conversations = [_clean(c) for c in table.column("messages").to_pylist()]
    random.Random(seed).shuffle(conversations)
    chosen, labels = [], set()
    for conversation in conversations:  # first pass: one per label
        tag = label(conversation[-1]["content"]) if label else None
        if tag not in labels or not label:
            chosen.append(conversation)
            labels.add(tag)
        if len(chosen) == k:
            return chosen
    return chosen + [c for c in conversations if c not in chosen][: k - len(chosen)]


def with_examples(messages: list[dict], examples: list[list[dict]]) -> list[dict]:
    """The prompt with `examples` as earlier turns: its system message(s), then each example's
    non-system turns, then its own turns."""
    system = [m for m in messages if m["role"] == "system"]
    shots = [m for example in examples for m in example if m["role"] != "system"]
    return system + shots + [m for m in messages if m["role"] != "system"]
