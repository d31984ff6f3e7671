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


def render(tokenizer, messages: list[dict], template: str | None = None, generation_prompt: bool = False) -> str:
    """The conversation as text, with `template` (None: the tokenizer's own)."""
    return tokenizer.apply_chat_template(
        messages, chat_template=template, tokenize=False, add_generation_prompt=generation_prompt
    )


def token_ids(tokenizer, text: str) -> list[int]:
    """Rendered text to ids; the template already placed every special token."""
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def prompt_ids(tokenizer, messages: list[dict], template: str | None = None) -> list[int]:
    """The ids of the generation prompt for `messages`: what the model sees before it answers."""
    return token_ids(tokenizer, render(tokenizer, messages, template, generation_prompt=True))
