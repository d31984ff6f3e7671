"""OpenAI's function-calling format in a chat record: the tools it declares and the calls its
assistant turns make, checked and normalised.

- `tools: [{"type": "function", "function": {"name", "description", "parameters"}}]`, or the older
  `functions: [{"name", "description", "parameters"}]` (read as tools). A name is 1-64 letters,
  digits, `_` or `-`, declared once; `parameters` must be a valid JSON Schema (`invalid_tools`,
  `invalid_tool_schema`).
- An assistant turn's `tool_calls: [{"id", "type": "function", "function": {"name", "arguments"}}]`
  (or the older `function_call: {"name", "arguments"}`, given an id): every call names a declared
  tool (`unknown_tool`), its arguments are a JSON object, given as a string as OpenAI sends it (an
  object is encoded; `invalid_tool_arguments` otherwise), and with `parallel_tool_calls: false` a
  turn makes one call (`too_many_tool_calls`). Arguments that are a JSON string holding JSON (a
  file that encoded them twice) are counted, for the manifest's warning: the model would learn to
  answer so.
- A `tool` turn answers a call made before it and not yet answered (`tool_call_id`); the older
  `function` turn answers the latest call of its `name` (`orphan_tool_message` otherwise).
"""

from __future__ import annotations

import json
import re

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from rayft.data.reject import Reject

TOOL_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def declared_tools(record: dict) -> list[dict] | None:
    """The record's tools in OpenAI's current shape, checked; None when it declares none."""
    tools, functions = record.get("tools"), record.get("functions")
    if tools is None and functions is None:
        return None
    if tools is not None:
        if not isinstance(tools, list) or not all(isinstance(t, dict) and t.get("type") == "function" for t in tools):
            raise Reject("invalid_tools", "'tools' must be a list of {type: 'function', function: {...}}")
        specs = [t.get("function") for t in tools]
    else:
        if not isinstance(functions, list):
            raise Reject("invalid_tools", "'functions' must be a list of {name, description, parameters}")
        specs = functions
    checked, names = [], set()
    for i, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str) or not TOOL_NAME.fullmatch(name):
            raise Reject("invalid_tools", f"tool {i}: a name of 1-64 letters, digits, '_' or '-' is required")
        if name in names:
            raise Reject("invalid_tools", f"tool {name!r} is declared twice")
        names.add(name)
        parameters = spec.get("parameters")
        if parameters is not None:
            try:
                if not isinstance(parameters, dict):
                    raise SchemaError(f"parameters must be an object, not {type(parameters).__name__}")
                Draft202012Validator.check_schema(parameters)
            except SchemaError as error:
                raise Reject(
                    "invalid_tool_schema", f"tool {name!r}: parameters is not a JSON Schema: {error.message}"
                ) from None
        kept = {k: spec[k] for k in ("name", "description", "parameters", "strict") if spec.get(k) is not None}
        checked.append({"type": "function", "function": kept})
    return checked


def call_arguments(where: str, arguments) -> tuple[str, bool]:
    """A call's arguments as the JSON string of an object, and whether they were encoded twice."""
    if isinstance(arguments, dict):
        return json.dumps(arguments, ensure_ascii=False), False
    if not isinstance(arguments, str):
        raise Reject(
            "invalid_tool_arguments", f"{where}.arguments must be a JSON string, got {type(arguments).__name__}"
        )
    try:
        value = json.loads(arguments)
    except (json.JSONDecodeError, RecursionError):
        raise Reject("invalid_tool_arguments", f"{where}.arguments is not valid JSON") from None
    if isinstance(value, str):
        try:
            inner = json.loads(value)
        except (json.JSONDecodeError, RecursionError):
            inner = None
        if isinstance(inner, dict):
            return arguments, True
    if not isinstance(value, dict):
        raise Reject("invalid_tool_arguments", f"{where}.arguments must be a JSON object, got {type(value).__name__}")
    return arguments, False


def turn_calls(i: int, message: dict) -> list[dict]:
    """An assistant turn's calls in OpenAI's current shape (unchecked names and arguments)."""
    calls = message.get("tool_calls")
    if calls is None and isinstance(message.get("function_call"), dict):
        calls = [{"id": f"call_{i}", "type": "function", "function": message["function_call"]}]
    if calls is None:
        return []
    if not isinstance(calls, list) or not calls:
        raise Reject("invalid_tool_call", f"messages[{i}].tool_calls must be a non-empty list")
    for j, call in enumerate(calls):
        ok = isinstance(call, dict) and isinstance(call.get("id"), str) and isinstance(call.get("function"), dict)
        if not ok or call.get("type", "function") != "function" or not isinstance(call["function"].get("name"), str):
            raise Reject(
                "invalid_tool_call",
                f"messages[{i}].tool_calls[{j}] must be {{id, type: 'function', function: {{name, arguments}}}}",
            )
    return calls


def check_calls(raw: list[dict], checked: list[dict], tools: list[dict] | None, parallel) -> int:
    """Check every call and every tool turn of a record; the normalised messages (`checked`) get
    their `tool_calls` and `tool_call_id`. Returns how many calls' arguments were encoded twice."""
    names = {t["function"]["name"] for t in tools or []}
    pending: dict[str, str] = {}  # call id → tool name, not yet answered
    twice = 0
    for i, (message, out) in enumerate(zip(raw, checked)):
        if out["role"] == "assistant":
            calls = turn_calls(i, message)
            if parallel is False and len(calls) > 1:
                raise Reject(
                    "too_many_tool_calls", f"messages[{i}] makes {len(calls)} calls and parallel_tool_calls is false"
                )
            normalised = []
            for j, call in enumerate(calls):
                name, where = call["function"]["name"], f"messages[{i}].tool_calls[{j}]"
                if name not in names:
                    raise Reject("unknown_tool", f"{where} calls {name!r}, which the record's tools do not declare")
                arguments, encoded_twice = call_arguments(where, call["function"].get("arguments", "{}"))
                twice += encoded_twice
                normalised.append(
                    {"id": call["id"], "type": "function", "function": {"name": name, "arguments": arguments}}
                )
                pending[call["id"]] = name
            if normalised:
                out["tool_calls"] = normalised
        elif out["role"] in ("tool", "function"):
            call_id = message.get("tool_call_id")
            if out["role"] == "function":  # the older format answers the latest call of its name
                call_id = next((c for c, n in reversed(pending.items()) if n == message.get("name")), None)
            if not isinstance(call_id, str) or call_id not in pending:
                raise Reject(
                    "orphan_tool_message", f"messages[{i}] answers no call made before it (tool_call_id {call_id!r})"
                )
            del pending[call_id]
            out["role"], out["tool_call_id"] = "tool", call_id
    return twice
