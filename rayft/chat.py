"""Chat prompts rendered one way in every stage: training, eval and serving call these functions.

A version's chat template is the one it was trained with: training renders with `model.chat_template`
(or the base tokenizer's), and the export saves that tokenizer, template included, into the artifact
(`chat_template.jinja`). Eval and serving read it back from the artifact (`artifact_template`) and
render with it, so the prompt a version is evaluated and served on is token for token the prompt it
was trained on. A leaf module: it imports no stage.
"""

from __future__ import annotations

import json
from pathlib import Path

TEMPLATE_FILE = "chat_template.jinja"


def artifact_template(folder: str | Path) -> str | None:
    """The chat template saved with a model or adapter folder (`chat_template.jinja`, or the older
    `chat_template` entry of `tokenizer_config.json`); None when it has none."""
    folder = Path(folder)
    if (folder / TEMPLATE_FILE).is_file():
        return (folder / TEMPLATE_FILE).read_text(encoding="utf-8")
    config = folder / "tokenizer_config.json"
    if config.is_file():
        template = json.loads(config.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, str):
            return template
    return None


def template_messages(messages: list[dict]) -> list[dict]:
    """Messages as chat templates take them: a tool call's `arguments` as an object (OpenAI sends
    a JSON string; templates write the object out themselves), unset fields left out."""
    shown = []
    for message in messages:
        message = {k: v for k, v in message.items() if v is not None}
        if message.get("tool_calls"):
            message["tool_calls"] = [
                call | {"function": call["function"] | {"arguments": arguments_object(call["function"])}}
                for call in message["tool_calls"]
            ]
        shown.append(message)
    return shown


def arguments_object(function: dict):
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            return json.loads(arguments)
        except json.JSONDecodeError:
            return arguments
    return arguments


def render(
    tokenizer,
    messages: list[dict],
    template: str | None = None,
    generation_prompt: bool = False,
    tools: list[dict] | None = None,
) -> str:
    """The conversation (and the tools it may call) as text, with `template` (None: the
    tokenizer's own)."""
    return tokenizer.apply_chat_template(
        template_messages(messages),
        tools=tools or None,
        chat_template=template,
        tokenize=False,
        add_generation_prompt=generation_prompt,
    )


def token_ids(tokenizer, text: str) -> list[int]:
    """Rendered text to ids; the template already placed every special token."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(
    tokenizer, messages: list[dict], template: str | None = None, tools: list[dict] | None = None
) -> list[int]:
    """The ids of the generation prompt for `messages`: what the model sees before it answers."""
    return token_ids(tokenizer, render(tokenizer, messages, template, generation_prompt=True, tools=tools))


# rayft's rendering of tools for a base whose own template has none: ChatML turns, the tools as
# JSON in the system turn, a call as `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` (the
# format of vLLM's `hermes` tool parser, `model.tool_parser`), a tool's result as a user turn in
# `<tool_response>`. Training a tool dataset on such a base sets it as the version's template, so
# eval and serving render that version with it (`artifact_template`).
DEFAULT_TOOL_TEMPLATE = (
    "{{ bos_token or '' }}"
    "{%- set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{%- if tools %}"
    "{{ '<|im_start|>system\n' }}{% if system %}{{ system + '\n\n' }}{% endif %}"
    "{{ '# Tools\n\nYou may call one or more functions. Their signatures, in <tools></tools>:\n<tools>' }}"
    "{%- for tool in tools %}{{ '\n' + (tool | tojson) }}{% endfor %}"
    '{{ \'\n</tools>\n\nTo call one, answer <tool_call>{"name": <name>, "arguments": <arguments object>}\''
    " + '</tool_call>, one per call.<|im_end|>\n' }}"
    "{%- elif system %}{{ '<|im_start|>system\n' + system + '<|im_end|>\n' }}{% endif %}"
    "{%- for message in messages %}"
    "{%- if message['role'] == 'user' %}{{ '<|im_start|>user\n' + message['content'] + '<|im_end|>\n' }}"
    "{%- elif message['role'] == 'assistant' %}{{ '<|im_start|>assistant\n' }}{% generation %}"
    "{%- if message['content'] %}{{ message['content'] }}{% endif %}"
    "{%- for call in message.get('tool_calls') or [] %}"
    "{{ '<tool_call>\n' + ({'name': call['function']['name'], 'arguments': call['function']['arguments']} | tojson)"
    " + '\n</tool_call>' }}"
    "{%- endfor %}{{ '<|im_end|>' }}{% endgeneration %}{{ '\n' }}"
    "{%- elif message['role'] == 'tool' %}"
    "{{ '<|im_start|>user\n<tool_response>\n' + message['content'] + '\n</tool_response><|im_end|>\n' }}"
    "{%- endif %}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
PROBE_TOOLS = [{"type": "function", "function": {"name": "rayft_probe_tool", "parameters": {"type": "object"}}}]
PROBE_CALL = [
    {"role": "user", "content": "probe"},
    {
        "role": "assistant",
        "tool_calls": [{"id": "c0", "type": "function", "function": {"name": "rayft_probe_call", "arguments": "{}"}}],
    },
]


def renders_tools(tokenizer, template: str | None = None) -> bool:
    """Whether `template` (None: the tokenizer's) writes a record's tools and its calls out."""
    try:
        text = render(tokenizer, PROBE_CALL, template, tools=PROBE_TOOLS)
    except Exception:  # a template that refuses tools or calls
        return False
    return "rayft_probe_tool" in text and "rayft_probe_call" in text


def tool_template(tokenizer, template: str | None = None) -> str | None:
    """The template to render tool conversations with: `template` (or the tokenizer's) when it
    renders tools, else rayft's `DEFAULT_TOOL_TEMPLATE`."""
    return template if renders_tools(tokenizer, template) else DEFAULT_TOOL_TEMPLATE
