"""Preference pairs: a prompt, the reply people preferred and the one they did not, checked with the
chat validation of `validate.py` and normalised to one shape.

Two formats are read as they come:
- OpenAI's: `{"input": {"messages": [...], "tools"?, "parallel_tool_calls"?},
  "preferred_output": [{"role": "assistant", ...}], "non_preferred_output": [{...}]}`;
- `{"prompt", "chosen", "rejected"}` (TRL's): the prompt a string (one user message) or a list of
  messages, each side a string (one assistant message) or a list of messages; `tools` and
  `parallel_tool_calls` at the top level.

A pair becomes `Normalised(messages=prompt + [preferred], rejected=[non-preferred])`, so the same
dataset trains SFT on the preferred replies too. Each side is validated as a whole chat record
(prompt and side), tool calls included. Rejects of their own (docs/data.md): `missing_prompt`,
`side_not_one_assistant_message`, `empty_side`, `roles_out_of_order` (the prompt starts with system
turns, then a user turn, has no two assistant turns in a row, and ends with a user or tool turn) and
`identical_sides` (the same reply after folding case and whitespace, calls compared as parsed JSON).

A dataset holds one kind of record: where pairs and SFT records mix, the more numerous kind wins (a
tie goes to pairs, which carry an SFT example each) and the others are rejected `mixed_kinds`.
"""

from __future__ import annotations

import json

from rayft.chat import arguments_object
from rayft.data.reject import Reject
from rayft.data.tools import call_arguments
from rayft.data.validate import Normalised, chat_record

KINDS = ("sft", "preference")
OPENAI_FIELDS = ("input", "preferred_output", "non_preferred_output")
CONTEXT_FIELDS = ("tools", "functions", "parallel_tool_calls")  # what a side's calls are checked against


def preference_record(record: object) -> Normalised:
    """A preference pair in either format, validated and normalised; raises Reject."""
    if not isinstance(record, dict):
        raise Reject("not_an_object", f"a record must be a JSON object, got {type(record).__name__}")
    if any(name in record for name in OPENAI_FIELDS):
        prompt, context = openai_prompt(record.get("input"))
        names = ("preferred_output", "non_preferred_output")
    else:
        prompt, context = prompt_messages(record.get("prompt")), {k: record[k] for k in CONTEXT_FIELDS if k in record}
        names = ("chosen", "rejected")
    preferred, other = (one_assistant_message(name, record.get(name)) for name in names)
    chosen = chat_record({"messages": prompt + [preferred]} | context)
    check_role_order(chosen.messages[:-1])
    rejected = chat_record({"messages": prompt + [other]} | context).messages[-1]
    if side_key(chosen.messages[-1]) == side_key(rejected):
        raise Reject("identical_sides", f"{names[0]} and {names[1]} are the same reply")
    twice = sum(call_arguments("", c["function"]["arguments"])[1] for c in rejected.get("tool_calls") or [])
    return Normalised(chosen.messages, chosen.tools, chosen.double_encoded + twice, [rejected])


def openai_prompt(source: object) -> tuple[list, dict]:
    """OpenAI's `input`: its messages, and the tools its sides may call."""
    if not isinstance(source, dict) or "messages" not in source:
        raise Reject("missing_prompt", "record has no 'input' object with 'messages'")
    return prompt_messages(source["messages"], "input.messages"), {k: source[k] for k in CONTEXT_FIELDS if k in source}


def prompt_messages(prompt: object, name: str = "prompt") -> list:
    """The prompt as a list of (unchecked) messages: a string is one user message."""
    if prompt is None:
        raise Reject("missing_prompt", f"record has no {name!r}")
    if isinstance(prompt, str):
        return [{"role": "user", "content": prompt}]
    if not isinstance(prompt, list):
        raise Reject("messages_not_a_list", f"{name!r} must be a list of messages, got {type(prompt).__name__}")
    if not prompt:
        raise Reject("empty_messages", f"{name!r} is empty")
    return prompt


def one_assistant_message(name: str, side: object) -> dict:
    """A side as its one (unchecked) assistant message: a string, or a list of exactly one."""
    if isinstance(side, str):
        side = [{"role": "assistant", "content": side}]
    if not (isinstance(side, list) and len(side) == 1 and isinstance(side[0], dict)):
        shape = f"{len(side)} messages" if isinstance(side, list) else type(side).__name__
        raise Reject("side_not_one_assistant_message", f"{name!r} must be one assistant message, got {shape}")
    message = side[0]
    if message.get("role") != "assistant":
        raise Reject(
            "side_not_one_assistant_message", f"{name!r} must be an assistant message, not {message.get('role')!r}"
        )
    content = message.get("content")
    calls = message.get("tool_calls") or message.get("function_call")
    if not calls and (content is None or (isinstance(content, str) and not content.strip())):
        raise Reject("empty_side", f"{name!r} has no content and no tool calls")
    return message


def check_role_order(prompt: list[dict]) -> None:
    """System turns first, then a user turn, never two assistant turns in a row, and a user or
    tool turn last (the one both sides answer). Tool turns answer calls (`tools.check_calls`)."""
    roles = [m["role"] for m in prompt]
    first = next((i for i, role in enumerate(roles) if role != "system"), None)
    if first is None:
        raise Reject("roles_out_of_order", "the prompt has only system turns; it must end with a user turn")
    if roles[first] != "user":
        raise Reject("roles_out_of_order", f"the conversation must start with a user turn, not {roles[first]!r}")
    for i in range(first + 1, len(roles)):
        if roles[i] == "system":
            raise Reject("roles_out_of_order", f"prompt[{i}] is a system turn after the conversation started")
        if roles[i] == roles[i - 1] == "assistant":
            raise Reject("roles_out_of_order", f"prompt[{i}] is a second assistant turn in a row")
    if roles[-1] not in ("user", "tool"):
        raise Reject("roles_out_of_order", f"the prompt's last turn is {roles[-1]!r}; it must be a user or tool turn")


def side_key(message: dict) -> tuple:
    """What makes two replies the same: the content with case and whitespace folded, and the calls
    (names and parsed arguments, ids left out)."""
    calls = [
        (c["function"]["name"], json.dumps(arguments_object(c["function"]), sort_keys=True))
        for c in message.get("tool_calls") or []
    ]
    return " ".join((message["content"] or "").lower().split()), calls


def winning_kind(found: dict[str, int]) -> str:
    """The kind a dataset keeps, from how many valid records of each kind it has: the more numerous,
    a tie going to 'preference'; 'sft' when there are none."""
    pairs = found.get("preference", 0)
    return "preference" if pairs and pairs >= found.get("sft", 0) else "sft"


def mixed_kinds(found: dict[str, int], kind: str) -> Reject:
    """Why a valid record of another kind than the one kept (`winning_kind`) is rejected."""
    counts = ", ".join(f"{found.get(k, 0)} {k}" for k in KINDS)
    return Reject("mixed_kinds", f"the data mixes kinds ({counts} valid records); it keeps the more numerous, {kind}")


def reject_other_kind(batch: dict, kind: str, found: dict[str, int]) -> dict:
    """Ray Data UDF over cleaned rows: valid records of another kind than `kind` become
    `mixed_kinds` rejects (their record: the normalised, scrubbed form)."""
    reject = mixed_kinds(found, kind)
    out = {name: list(batch[name]) for name in ("status", "reason", "message", "record")}
    for i, (status, row_kind) in enumerate(zip(batch["status"], batch["kind"])):
        if status == "ok" and row_kind != kind:
            out["status"][i], out["reason"][i], out["message"][i] = "rejected", reject.reason, reject.message
            out["record"][i] = stored_record(batch["messages"][i], batch["rejected"][i])
    return batch | out


def stored_record(messages_json: str, rejected_json: str) -> str:
    """A kept record as the reject file shows it once removed: its messages (a pair's with its
    rejected reply, as `{"messages", "rejected"}`)."""
    if not rejected_json:
        return messages_json
    return f'{{"messages": {messages_json}, "rejected": {rejected_json}}}'
