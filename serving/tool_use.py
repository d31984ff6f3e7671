"""Tools on the engine: a chat request's tools rendered into its prompt, its `tool_choice` enforced,
and the calls read back from the text, with vLLM's own parsers (`model.tool_parser`, recorded with
every version; default `hermes`).

- Rendering: the tools go to the chat template (`rayft.chat`) with the conversation; a template
  that writes no tools (the base's, often) is replaced by rayft's default tool template, the one a
  tool adapter trained on such a base carries in its artifact.
- Enforcing: `required` or a named function becomes a grammar vLLM's structured-output backend
  (xgrammar) applies while sampling (the parser's `adjust_request`: hermes uses a structural tag),
  so the arguments always parse; `auto` leaves the model free.
- Reading: the text is parsed into OpenAI's `tool_calls`; with `parallel_tool_calls: false` only the
  first call is kept. `finish_reason` is `tool_calls` when calls were made (a named function's
  answer keeps `stop`, as OpenAI's does).
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from rayft import chat


@dataclass
class ToolUse:
    """One request's tools as the template takes them, and the parser that reads its calls (None
    with `tool_choice: none`)."""

    tools: list[dict]
    parser: object | None
    named: bool


def tool_use(request, tokenizer, parser_name: str, model_config) -> ToolUse | None:
    """The request's tool use (None without tools); its sampling constraint set on `request`."""
    if not getattr(request, "tools", None):
        return None
    tools = [t.model_dump(exclude_none=True) for t in request.tools]
    if request.tool_choice == "none":
        return ToolUse(tools, None, False)
    from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionNamedToolChoiceParam
    from vllm.parser import ParserManager

    parser = ParserManager.get_parser(tool_parser_name=parser_name, enable_auto_tools=True)(
        tokenizer, request.tools, model_config=model_config
    )
    parser.adjust_request(request)
    compact_call_arguments(request)
    return ToolUse(tools, parser, isinstance(request.tool_choice, ChatCompletionNamedToolChoiceParam))


def compact_call_arguments(request) -> None:
    """Calls' JSON with at most one whitespace between its tokens, as compact as the engine writes
    every other constrained JSON (`disable_any_whitespace`): a structural tag would otherwise let a
    weak model pad arguments with whitespace until `max_tokens` cuts the call off."""
    constraint = request.structured_outputs
    if constraint is None or not constraint.structural_tag:
        return
    tag = json.loads(constraint.structural_tag)
    stack = [tag]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            if node.get("type") == "json_schema" and "max_whitespace_cnt" in node:
                node["max_whitespace_cnt"] = 1
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    constraint.structural_tag = json.dumps(tag)


def prompt_template(tokenizer, template: str | None, use: ToolUse | None) -> str | None:
    """The template a request renders with: the model's, or one that writes tools when it has them."""
    return chat.tool_template(tokenizer, template) if use else template


def read_answer(
    text: str, finish: str | None, use: ToolUse | None, request
) -> tuple[str | None, list[dict], str | None]:
    """(content, tool calls in OpenAI's shape, finish reason) of a finished answer."""
    if use is None or use.parser is None:
        return text, [], finish
    from vllm.renderers.chat_utils import make_tool_call_id

    _reasoning, content, calls = use.parser.parse(text, request, enable_auto_tools=True)
    calls = list(calls or [])
    if request.parallel_tool_calls is False:
        calls = calls[:1]
    shown = [
        {
            "id": call.id or make_tool_call_id(),
            "type": "function",
            "function": {"name": call.name, "arguments": call.arguments},
        }
        for call in calls
    ]
    if shown and not use.named and finish == "stop":
        finish = "tool_calls"
    return (content or None) if shown else (content if content is not None else text), shown, finish
