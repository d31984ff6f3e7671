"""The per-record Ray Data step: raw record → validated, PII-scrubbed, labelled, measured row.

Every output row is either `ok` (with its messages, a preference pair's rejected reply, label, kind,
token count and content hashes) or
`rejected` (with a stable reason code, a message, and the raw record, scrubbed of PII unless PII
handling is off, so the reject file never leaks what the outputs do not). A record that makes any
step raise (the chat template, an NER detector, anything unforeseen) is rejected with the error as
its message; it never fails the batch.
"""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache

import numpy as np

from rayft.chat import arguments_object, render, tool_template
from rayft.config import DataConfig
from rayft.data import pii
from rayft.data.dedup import compared_text, dedup_text, signatures
from rayft.data.validate import Reject, decode_line, normalise_record

NO_LABEL = "__all__"


def folded_text(messages: list[dict]) -> str:
    """Messages as 'role: content' lines, case and whitespace folded."""
    return "\n".join(f"{m['role']}: {' '.join((m['content'] or '').lower().split())}" for m in messages)


def text_hash(messages: list[dict], tools: list[dict] | None = None, rejected: list[dict] | None = None) -> str:
    """Hash of a whole record's normalised text (case and whitespace folded), its tool calls
    (arguments as parsed JSON, call ids left out), the tools it declares and a preference pair's
    rejected reply: exact duplicates."""
    text = folded_text(messages)
    if rejected:  # other records hash as they always did
        text += "\nrejected " + folded_text(rejected)
    calls = [
        [{"name": c["function"]["name"], "arguments": arguments_object(c["function"])} for c in m["tool_calls"]]
        for m in messages + (rejected or [])
        if m.get("tool_calls")
    ]
    if calls or tools:  # records without tools hash as they always did
        text += "\n" + json.dumps([calls, tools], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(text.encode()).hexdigest()


def called_tools(messages: list[dict]) -> str:
    """The names of the tools a record's assistant turns call, sorted and joined (the split can
    stratify on them)."""
    return ",".join(sorted({c["function"]["name"] for m in messages for c in m.get("tool_calls") or []}))


def label_from_json(answer: str, path: str) -> str:
    try:
        value = json.loads(answer)
        for key in path.split("."):
            value = value[int(key)] if isinstance(value, list) else value[key]
    except (json.JSONDecodeError, KeyError, IndexError, ValueError, TypeError):
        raise Reject("missing_label", f"the answer has no JSON field {path!r}") from None
    return str(value)


class CleanRecords:
    """The per-record step over one batch of raw rows (see `clean_batch`)."""

    def __init__(self, data: DataConfig, tokenizer: str | None, chat_template: str | None = None):
        self.data = data
        self.label_regex = re.compile(data.label_regex) if data.label_regex else None
        self.ner = pii.load_detector(data.pii_detector)
        self.tokenizer, self.tools_template = None, None
        if tokenizer:
            from transformers import AutoTokenizer

            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
            if chat_template:
                self.tokenizer.chat_template = chat_template

    def label_of(self, record: object, messages: list[dict]) -> str:
        if self.data.label_field:
            value = record.get(self.data.label_field) if isinstance(record, dict) else None
            if value is None:
                raise Reject("missing_label", f"record has no label field {self.data.label_field!r}")
            return str(value)
        if self.data.label_json:
            return label_from_json(messages[-1]["content"] or "", self.data.label_json)
        if self.label_regex:
            match = self.label_regex.search(messages[-1]["content"] or "")
            if not match:
                raise Reject("missing_label", f"label_regex {self.label_regex.pattern!r} does not match the answer")
            return match.group(1)
        return NO_LABEL

    def scrub_messages(self, messages: list[dict]) -> tuple[list[dict], dict[str, int]]:
        if self.data.pii == "off":
            return messages, {}
        counts: dict[str, int] = {}
        scrubbed = []
        for message in messages:
            texts = [message["content"] or ""] + [c["function"]["arguments"] for c in message.get("tool_calls") or []]
            cleaned = []
            for text in texts:
                clean, found = pii.scrub(text, self.ner)
                cleaned.append(clean)
                for kind, n in found.items():
                    counts[kind] = counts.get(kind, 0) + n
            copy = message | {"content": cleaned[0] if message["content"] is not None else None}
            if message.get("tool_calls"):
                copy["tool_calls"] = [
                    c | {"function": c["function"] | {"arguments": arguments}}
                    for c, arguments in zip(message["tool_calls"], cleaned[1:])
                ]
            scrubbed.append(copy)
        return scrubbed, counts

    def rendered(self, conversation: list[dict], tools: list[dict] | None = None) -> str | None:
        """The conversation and its tools through the model's chat template (None without a
        tokenizer); one with tools or calls through the template training will use for it
        (`rayft.chat.tool_template`: rayft's own when the model's writes no tools)."""
        if self.tokenizer is None:
            return None
        calls = tools or any(m.get("tool_calls") for m in conversation)
        try:
            if calls and self.tools_template is None:
                self.tools_template = tool_template(self.tokenizer) or self.tokenizer.chat_template
            return render(self.tokenizer, conversation, self.tools_template if calls else None, tools=tools)
        except Exception as error:  # jinja2's TemplateError, or the template's raise_exception()
            raise Reject("template_error", f"the chat template cannot render this record: {error}") from None

    def count_tokens(self, rows: list[dict]) -> list[int]:
        """Tokens per valid row: the rendered texts tokenized in one batch, or words without a
        tokenizer; for a preference pair, its longer conversation (prompt and either reply)."""
        if self.tokenizer is None:
            return [max(sum(len(dedup_text([m]).split()) for m in c) for c in conversations(r)) for r in rows]
        texts = [text for r in rows for text in r["texts"]]
        if not texts:  # the tokenizer cannot take an empty batch
            return []
        lengths = iter(len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"])
        return [max(next(lengths) for _ in r["texts"]) for r in rows]

    def clean(self, raw: bytes) -> dict:
        row = {"pii": {}}
        try:
            record = decode_line(raw)
            checked = normalise_record(record, self.data.format)
            label = self.label_of(record, checked.messages)
            # A pair's both replies scrubbed with its prompt; counted even when dropped.
            scrubbed, row["pii"] = self.scrub_messages(checked.messages + (checked.rejected or []))
            if row["pii"] and self.data.pii == "drop":
                kinds = ", ".join(f"{n} {k}" for k, n in sorted(row["pii"].items()))
                raise Reject("contains_pii", f"record contains PII ({kinds}) and data.pii is 'drop'")
            n = len(checked.messages)
            kept = {
                "messages": scrubbed[:n],
                "rejected": scrubbed[n:] if checked.rejected is not None else None,
                "kind": checked.kind,
                "tools": checked.tools,
                "double_encoded": checked.double_encoded,
            }
            texts = [self.rendered(c, checked.tools) for c in conversations(kept)]
            return row | kept | {"label": label, "texts": texts, "reject": None}
        except Reject as reject:
            return row | {"messages": None, "label": "", "reject": reject}
        except Exception as error:  # any other failure is this record's, not the batch's
            return row | {
                "messages": None,
                "label": "",
                "reject": Reject("record_error", f"{type(error).__name__}: {error}"),
            }

    def reject_text(self, raw: bytes) -> str:
        """The rejected record as written to the reject file: scrubbed, or withheld when scrubbing
        it fails (it may hold PII nobody could remove)."""
        text = raw.decode("utf-8", "replace")
        if self.data.pii == "off":
            return text
        try:
            return pii.scrub(text, self.ner)[0]
        except Exception as error:
            return f"<withheld: PII scrubbing failed on this record ({type(error).__name__})>"

    def checked(self, raws: list[bytes]) -> list[dict]:
        """`clean` for each raw record, then the kept ones' token counts (`n_tokens`), rejecting
        those over data.max_tokens."""
        rows = [self.clean(raw) for raw in raws]
        ok = [r for r in rows if r["reject"] is None]
        for row, n in zip(ok, self.count_tokens(ok)):
            row["n_tokens"] = n
            if n > self.data.max_tokens:
                row["reject"] = Reject("too_many_tokens", f"{n} tokens > data.max_tokens {self.data.max_tokens}")
        return rows

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, list]:
        raws = [bytes(r) for r in batch["raw"]]
        rows = self.checked(raws)
        good = [r["reject"] is None for r in rows]
        hashes = [text_hash(r["messages"], r["tools"], r["rejected"]) if g else "" for g, r in zip(good, rows)]
        columns = {
            "source": batch["source"],
            "line": batch["line"],
            "order": batch["order"],
            "status": ["ok" if g else "rejected" for g in good],
            "reason": ["" if g else r["reject"].reason for g, r in zip(good, rows)],
            "message": ["" if g else r["reject"].message for g, r in zip(good, rows)],
            "record": ["" if g else self.reject_text(raw) for g, raw in zip(good, raws)],
            "messages": [json.dumps(r["messages"], ensure_ascii=False) if g else "" for g, r in zip(good, rows)],
            "rejected": [
                json.dumps(r["rejected"], ensure_ascii=False) if g and r["rejected"] else "" for g, r in zip(good, rows)
            ],
            "kind": [r["kind"] if g else "" for g, r in zip(good, rows)],
            "label": [r["label"] for r in rows],
            "n_tokens": [r.get("n_tokens", 0) for r in rows],
            "text_hash": hashes,
            # What the split orders records by: a pair's prompt (pairs sharing one sit together).
            "split_key": [
                text_hash(r["messages"][:-1], r["tools"]) if g and r["rejected"] else h
                for g, r, h in zip(good, rows, hashes)
            ],
            "tools": [
                json.dumps(r["tools"], ensure_ascii=False) if g and r["tools"] else "" for g, r in zip(good, rows)
            ],
            "called_tools": [called_tools(r["messages"]) if g else "" for g, r in zip(good, rows)],
            "double_encoded": [r.get("double_encoded", 0) for r in rows],
        }
        texts = [compared_text(r["messages"], r["rejected"] is not None) if g else "" for g, r in zip(good, rows)]
        columns["minhash"] = signatures(texts, self.data.num_perm, self.data.seed)
        # One JSON column, not one column per kind: an NER detector may report kinds of its own.
        columns["pii"] = [json.dumps(r["pii"], sort_keys=True) if r["pii"] else "" for r in rows]
        return columns


def conversations(row: dict) -> list[list[dict]]:
    """A kept row's conversations as training sees them: its messages, and for a preference pair
    also the prompt with the rejected reply."""
    if row["rejected"] is None:
        return [row["messages"]]
    return [row["messages"], row["messages"][:-1] + row["rejected"]]


@lru_cache(maxsize=4)
def _cleaner(data_json: str, tokenizer: str | None, chat_template: str | None) -> CleanRecords:
    return CleanRecords(DataConfig.model_validate_json(data_json), tokenizer, chat_template)


def clean_batch(
    batch: dict[str, np.ndarray], data_json: str, tokenizer: str | None, chat_template: str | None = None
) -> dict[str, list]:
    """Ray Data task UDF. The CleanRecords (compiled patterns, NER detector, tokenizer) is built once
    per worker process and kept, and Ray reuses its task processes: no dedicated actor processes to
    start, which on a small cluster cost more than the work (bench/RESULTS.md)."""
    return _cleaner(data_json, tokenizer, chat_template)(batch)


def _pii_totals(batch: dict[str, np.ndarray]) -> dict[str, list]:
    totals: dict[str, int] = {}
    for found in batch["pii"]:
        for kind, n in (json.loads(found) if found else {}).items():
            totals[kind] = totals.get(kind, 0) + n
    return {"pii": [json.dumps(totals)]}


def _kind_totals(batch: dict[str, np.ndarray]) -> dict[str, list]:
    kinds = [kind for kind, status in zip(batch["kind"], batch["status"]) if status == "ok"]
    return {"kinds": [json.dumps({kind: kinds.count(kind) for kind in set(kinds)})]}


def kinds_found(cleaned) -> dict[str, int]:
    """How many valid records of each kind ('sft', 'preference') the cleaned rows hold, counted
    per block on the cluster."""
    totals: dict[str, int] = {}
    blocks = cleaned.select_columns(["kind", "status"]).map_batches(_kind_totals, batch_format="numpy", batch_size=None)
    for row in blocks.iter_rows():
        for kind, n in json.loads(row["kinds"]).items():
            totals[kind] = totals.get(kind, 0) + n
    return dict(sorted(totals.items()))


def pii_found(cleaned) -> dict[str, int]:
    """PII findings per type over all cleaned rows (kept, rejected or dropped for PII), summed per
    block on the cluster; only one small total per block reaches the driver."""
    totals: dict[str, int] = {}
    blocks = cleaned.select_columns(["pii"]).map_batches(_pii_totals, batch_format="numpy", batch_size=None)
    for row in blocks.iter_rows():
        for kind, n in json.loads(row["pii"]).items():
            totals[kind] = totals.get(kind, 0) + n
    return dict(sorted(totals.items()))
