"""Chat records to training tokens: the model's own chat template, loss on assistant tokens only.

The conversation is rendered once with the tokenizer's chat template (`rayft.chat.render`, the same
rendering eval and serving use; the tokenizer carries `model.chat_template` when one is set). Each
assistant turn's character span is found by rendering the conversation up to that turn (works for
any template whose renders are prefix-stable, which Llama, Qwen, Mistral and ChatML templates are),
and tokens inside those spans get labels; everything else gets -100. A message with `weight: 0` is
not learned. A record's tools are rendered with it (the template writes them where it wants, most
into the system turn); an assistant turn that calls tools is learned, call included, and a `tool`
turn (a tool's result) never is.

Packing joins examples (best-fit decreasing) into rows of at most `max_seq_len` tokens with position
ids restarting at each example, so attention stays inside each example (transformers detects packed
rows from the position ids when the forward runs with `use_cache=False`).
"""

from __future__ import annotations

from dataclasses import dataclass

from rayft.chat import render

IGNORE_INDEX = -100


class TemplateError(ValueError):
    """The chat template cannot be used for assistant-only loss."""


def assistant_spans(
    tokenizer, messages: list[dict], tools: list[dict] | None = None
) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns to learn."""
    text = render(tokenizer, messages, tools=tools)
    spans = []
    for i, message in enumerate(messages):
        if message["role"] != "assistant" or message.get("weight") == 0:
            continue
        prefix = render(tokenizer, messages[:i], generation_prompt=True, tools=tools)
        upto = render(tokenizer, messages[: i + 1], tools=tools)
        if not (text.startswith(upto) and upto.startswith(prefix)):
            raise TemplateError(
                "the chat template renders a conversation differently from its prefix; "
                "assistant-only loss needs a prefix-stable template (set model.chat_template)"
            )
        end = len(upto.rstrip())  # the turn's end token is learned, the whitespace after it is not
        spans.append((len(prefix), end))
    return text, spans


def tokenize_conversation(
    tokenizer, messages: list[dict], max_seq_len: int, tools: list[dict] | None = None
) -> dict[str, list[int]]:
    """`input_ids` and `labels` (-100 outside assistant turns), truncated to `max_seq_len`."""
    text, spans = assistant_spans(tokenizer, messages, tools)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    labels = []
    for token_id, (start, _end) in zip(encoded["input_ids"], encoded["offset_mapping"]):
        learned = any(lo <= start < hi for lo, hi in spans)
        labels.append(token_id if learned else IGNORE_INDEX)
    return {"input_ids": encoded["input_ids"][:max_seq_len], "labels": labels[:max_seq_len]}


def tokenize_pair(
    tokenizer, messages: list[dict], rejected: dict, max_seq_len: int, tools: list[dict] | None = None
) -> dict[str, list[int]]:
    """A preference pair (`messages` ending in the chosen reply, `rejected` the other reply to the
    same prompt) as two token rows where only the final reply is learned."""
    prompt = [m | {"weight": 0} if m["role"] == "assistant" else m for m in messages[:-1]]
    chosen = tokenize_conversation(tokenizer, prompt + messages[-1:], max_seq_len, tools)
    other = tokenize_conversation(tokenizer, prompt + [rejected], max_seq_len, tools)
    return {
        "chosen_input_ids": chosen["input_ids"],
        "chosen_labels": chosen["labels"],
        "rejected_input_ids": other["input_ids"],
        "rejected_labels": other["labels"],
    }


@dataclass
class Batch:
    """A micro-batch ready for the model's forward."""

    input_ids: list[list[int]]
    labels: list[list[int]]
    position_ids: list[list[int]]
    attention_mask: list[list[int]] | None  # None for packed rows
    reference_logps: list[float] | None = None  # pairs only, when computed before training


def pad_batch(examples: list[dict], pad_id: int) -> Batch:
    """Right-pad examples to the longest one; padding is masked out of attention and loss."""
    width = max(len(e["input_ids"]) for e in examples)
    ids, labels, positions, mask = [], [], [], []
    for e in examples:
        n, pad = len(e["input_ids"]), width - len(e["input_ids"])
        ids.append(list(e["input_ids"]) + [pad_id] * pad)
        labels.append(list(e["labels"]) + [IGNORE_INDEX] * pad)
        positions.append(list(range(n)) + [0] * pad)
        mask.append([1] * n + [0] * pad)
    return Batch(ids, labels, positions, mask)


def pair_batch(pairs: list[dict], pad_id: int) -> Batch:
    """Preference pairs as one padded batch: every chosen row, then every rejected row (`dpo.py`)."""
    rows = [{"input_ids": p["chosen_input_ids"], "labels": p["chosen_labels"]} for p in pairs]
    rows += [{"input_ids": p["rejected_input_ids"], "labels": p["rejected_labels"]} for p in pairs]
    batch = pad_batch(rows, pad_id)
    if pairs and "ref_chosen_logps" in pairs[0]:
        batch.reference_logps = [float(p["ref_chosen_logps"]) for p in pairs]
        batch.reference_logps += [float(p["ref_rejected_logps"]) for p in pairs]
    return batch


def pack_examples(examples: list[dict], max_seq_len: int) -> list[dict]:
    """Join examples into rows of at most `max_seq_len` tokens, best-fit decreasing: longest first,
    each into the fullest row it still fits (a new row when none has room), so rows come out nearly
    full and little of each step is padding. Rows keep their examples in the order placed.

    Each example's first label is dropped so no token is predicted across an example boundary.
    """
    rows: list[dict] = []
    room: list[int] = []
    for e in sorted(examples, key=lambda e: len(e["input_ids"]), reverse=True):
        n = len(e["input_ids"])
        fits = [i for i, free in enumerate(room) if free >= n]
        if fits:
            i = min(fits, key=lambda i: room[i])
        else:
            rows.append({"input_ids": [], "labels": [], "position_ids": []})
            room.append(max(max_seq_len, n))
            i = len(rows) - 1
        rows[i]["input_ids"].extend(e["input_ids"])
        rows[i]["labels"].extend([IGNORE_INDEX] + list(e["labels"][1:]))
        rows[i]["position_ids"].extend(range(n))
        room[i] -= n
    return rows


def packed_batch(rows: list[dict], pad_id: int) -> Batch:
    """Packed rows as a batch (rows padded to the same width with position ids that restart)."""
    width = max(len(r["input_ids"]) for r in rows)
    ids, labels, positions = [], [], []
    for r in rows:
        pad = width - len(r["input_ids"])
        ids.append(r["input_ids"] + [pad_id] * pad)
        labels.append(r["labels"] + [IGNORE_INDEX] * pad)
        positions.append(r["position_ids"] + list(range(pad)))
    return Batch(ids, labels, positions, None)
