"""Record validation: turn one raw input record into chat `messages`, or a reject with a reason.
Preference pairs (`preference.py`) are chat validation applied to each side.

Pure functions with no Ray in them; `prepare.py` runs them over Ray Data batches. Every reason is a
stable code (for scripts) plus a human message (for people); see docs/data.md for the list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rayft.data.reject import Reject
from rayft.data.tools import check_calls, declared_tools

ROLES = ("system", "user", "assistant", "tool")
LEGACY_ROLES = ("function",)  # OpenAI's older function-calling format: read as tool turns


@dataclass
class Normalised:
    """A validated record: its messages, the tools it declares (OpenAI's `tools`, or the older
    `functions` as tools), and how many of its calls' arguments were JSON strings holding JSON. A
    preference pair's messages are the prompt and the preferred reply; `rejected` holds the one
    non-preferred reply (None for every other record)."""

    messages: list[dict]
    tools: list[dict] | None = None
    double_encoded: int = 0
    rejected: list[dict] | None = None

    @property
    def kind(self) -> str:
        """'preference' for a pair, 'sft' for every other record."""
        return "sft" if self.rejected is None else "preference"


def decode_line(raw: bytes) -> object:
    """Bytes of one JSONL line to a JSON value; rejects invalid UTF-8 and invalid JSON."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise Reject("invalid_utf8", f"line is not valid UTF-8 (byte {error.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise Reject("invalid_json", f"invalid JSON: {error.msg} at column {error.colno}") from None
    except RecursionError:
        raise Reject("invalid_json", "JSON nested too deeply to read") from None


def _check_message(i: int, message: object) -> dict:
    """One message's role, content and weight; its tool calls are checked with the whole record
    (`tools.check_calls`). An assistant turn that only calls tools has no content (None)."""
    if not isinstance(message, dict):
        raise Reject("message_not_an_object", f"messages[{i}] must be an object, got {type(message).__name__}")
    role = message.get("role")
    if role not in ROLES + LEGACY_ROLES:
        raise Reject("unknown_role", f"messages[{i}].role is {role!r}; expected one of {', '.join(ROLES)}")
    content = message.get("content")
    calls_only = role == "assistant" and bool(message.get("tool_calls") or message.get("function_call"))
    if calls_only and (content is None or (isinstance(content, str) and not content.strip())):
        content = None
    elif not isinstance(content, str):
        raise Reject("non_string_content", f"messages[{i}].content must be a string, got {type(content).__name__}")
    elif not content.strip():
        raise Reject("empty_content", f"messages[{i}].content is empty")
    weight = message.get("weight")
    if weight is not None and weight not in (0, 1):
        raise Reject("invalid_weight", f"messages[{i}].weight must be 0 or 1, got {weight!r}")
    checked = {"role": role, "content": content}
    if weight is not None:
        checked["weight"] = int(weight)
    return checked


def messages_from_chat(record: object) -> list[dict]:
    """Validate a chat record (`{"messages": [...]}`, tools and tool calls included) and return its
    normalised messages."""
    return chat_record(record).messages


def chat_record(record: object) -> Normalised:
    """A chat record's normalised messages and tools, with its tool calls checked (`tools.py`)."""
    if not isinstance(record, dict):
        raise Reject("not_an_object", f"a record must be a JSON object, got {type(record).__name__}")
    if "messages" not in record:
        raise Reject("missing_messages", "record has no 'messages' field")
    messages = record["messages"]
    if not isinstance(messages, list):
        raise Reject("messages_not_a_list", f"'messages' must be a list, got {type(messages).__name__}")
    if not messages:
        raise Reject("empty_messages", "'messages' is empty")
    checked = [_check_message(i, m) for i, m in enumerate(messages)]
    tools = declared_tools(record)
    double_encoded = check_calls(messages, checked, tools, record.get("parallel_tool_calls"))
    if not any(m["role"] == "assistant" for m in checked):
        raise Reject("no_assistant_turn", "no assistant message to learn from")
    if checked[-1]["role"] != "assistant":
        raise Reject("last_turn_not_assistant", f"the last message is from {checked[-1]['role']!r}, not the assistant")
    return Normalised(checked, tools, double_encoded)


def messages_from_prompt_completion(record: object) -> list[dict]:
    """Validate a `{"prompt": ..., "completion": ...}` record and return it as two messages."""
    if not isinstance(record, dict):
        raise Reject("not_an_object", f"a record must be a JSON object, got {type(record).__name__}")
    for side in ("prompt", "completion"):
        value = record.get(side)
        if value is None:
            raise Reject("missing_prompt_or_completion", f"record has no {side!r}")
        if not isinstance(value, str):
            raise Reject("non_string_content", f"{side!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise Reject("empty_content", f"{side!r} is empty")
    return [
        {"role": "user", "content": record["prompt"]},
        {"role": "assistant", "content": record["completion"]},
    ]


# A record with any of these fields and no `messages` is a preference pair: OpenAI's
# (`preferred_output`, `non_preferred_output`) or prompt/chosen/rejected.
PREFERENCE_FIELDS = ("preferred_output", "non_preferred_output", "chosen", "rejected")


def detect_format(record: object) -> str:
    """'messages', 'prompt_completion' or 'preference', judged from a record's fields."""
    if not isinstance(record, dict) or "messages" in record:
        return "messages"
    if any(name in record for name in PREFERENCE_FIELDS):
        return "preference"
    return "prompt_completion" if "prompt" in record or "completion" in record else "messages"


RECORD_FORMATS = ("auto", "messages", "prompt_completion", "preference")


def normalise_record(record: object, fmt: str = "auto") -> Normalised:
    """A record of `fmt` ('auto': told by its fields, 'messages', 'prompt_completion' or
    'preference') as validated messages (and tools, and a pair's non-preferred reply). The format is
    the record's shape, not its container (JSONL, Parquet, ...)."""
    if fmt not in RECORD_FORMATS:
        raise ValueError(f"record format must be one of {', '.join(RECORD_FORMATS)}, got {fmt!r}")
    fmt = detect_format(record) if fmt == "auto" else fmt
    if fmt == "prompt_completion":
        return Normalised(messages_from_prompt_completion(record))
    if fmt == "preference":
        from rayft.data.preference import preference_record  # it builds on this module's chat validation

        return preference_record(record)
    return chat_record(record)


def normalise(record: object, fmt: str = "auto") -> list[dict]:
    """`normalise_record`'s messages."""
    return normalise_record(record, fmt).messages
