"""Tool calls read back from what a model wrote, with vLLM's tool parsers (`model.tool_parser`,
default `hermes`: `<tool_call>{"name": ..., "arguments": {...}}</tool_call>`, what rayft's default
tool template teaches). Eval and serving read calls the same way. A leaf module: vLLM is imported on
first use.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field

DEFAULT_PARSER = "hermes"


# The tool a call that does not parse was meant for: its JSON's first "name" (hermes and the other
# JSON formats write it first), so choosing the right tool and writing valid arguments are told apart.
ATTEMPTED_NAME = re.compile(r'"name"\s*:\s*"([^"\\]{1,64})"')


@dataclass
class ReadCalls:
    """What a model's text says: its plain text, the calls it makes ({name, arguments: JSON string}),
    whether it tried to call (the parser's start marker is there, parsed or not), and the tool a call
    that did not parse names."""

    content: str | None
    calls: list[dict] = field(default_factory=list)
    attempted: bool = False
    attempted_name: str | None = None

    @property
    def chosen_tool(self) -> str | None:
        """The tool the answer picked first: its first parsed call's, else the one it tried to call."""
        return self.calls[0]["name"] if self.calls else self.attempted_name

    def to_json(self) -> str:
        return json.dumps(asdict(self), ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | None) -> ReadCalls:
        if not text:
            return cls(content=None)
        try:
            return cls(**json.loads(text))
        except (json.JSONDecodeError, TypeError):
            return cls(content=text)


class CallReader:
    """A vLLM tool parser for one tokenizer and one list of tools."""

    def __init__(self, parser: str, tokenizer, tools: list[dict]):
        from vllm.entrypoints.openai.chat_completion.protocol import ChatCompletionRequest
        from vllm.tool_parsers import ToolParserManager

        self.parser = ToolParserManager.get_tool_parser(parser)(tokenizer, tools)
        self.request = ChatCompletionRequest(
            model="model", messages=[{"role": "user", "content": "-"}], tools=tools, tool_choice="auto"
        )
        self.marker = getattr(self.parser, "tool_call_start_token", None)

    def read(self, text: str) -> ReadCalls:
        found = self.parser.extract_tool_calls(text, self.request)
        calls = [{"name": c.function.name, "arguments": c.function.arguments} for c in found.tool_calls]
        attempted = bool(calls) or bool(self.marker and self.marker in text)
        tried = ATTEMPTED_NAME.search(text[text.find(self.marker) :]) if attempted and not calls else None
        return ReadCalls(found.content, calls, attempted, tried.group(1) if tried else None)
