"""A synthetic preference set in OpenAI's DPO format, from the support-ticket generator of
`samples.py`: each ticket's prompt with its correct triage as the preferred output, and a plausible
wrong one (another category, with that category's reply) as the non-preferred output, so DPO on the
tiny test model has something learnable. Offline, seeded, for tests and the quickstart. The tickets
keep the sample's planted PII and duplicates; a few lines are planted that validation must reject:
identical sides, an empty side, a prompt that ends with the assistant.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rayft.data.samples import CATEGORIES, PRODUCTS, support_tickets


def wrong_triage(answer: str, rng: random.Random) -> str:
    """A plausible wrong answer to a ticket answered `answer` ("Category: X\\nPriority: P\\nreply"):
    another category with one of that category's replies, the same priority."""
    category, priority = (line.split(":", 1)[1].strip() for line in answer.split("\n")[:2])
    other = rng.choice(sorted(set(CATEGORIES) - {category}))
    fill = {"order": f"#{rng.randint(10000, 99999)}", "product": rng.choice(PRODUCTS)}
    reply = rng.choice(CATEGORIES[other]["replies"]).format(**fill)
    return f"Category: {other}\nPriority: {priority}\n{reply}"


def preference_pairs(n: int = 600, seed: int = 0) -> list[dict]:
    """`n` pairs in OpenAI's format: `input.messages` (system, user), `preferred_output` (the
    ticket's triage), `non_preferred_output` (`wrong_triage`)."""
    rng = random.Random(seed + 1)
    pairs = []
    for ticket in support_tickets(n, seed):
        *prompt, answer = ticket["messages"]
        pairs.append(
            {
                "input": {"messages": prompt},
                "preferred_output": [answer],
                "non_preferred_output": [{"role": "assistant", "content": wrong_triage(answer["content"], rng)}],
            }
        )
    return pairs


def planted_preference_lines() -> list[str]:
    """Lines validation must reject: identical sides, an empty side, a prompt ending with the
    assistant."""
    ask = [{"role": "user", "content": "My invoice is wrong."}]
    right = [{"role": "assistant", "content": "Category: billing\nPriority: medium\nWe will fix it."}]
    wrong = [{"role": "assistant", "content": "Category: shipping\nPriority: medium\nIt ships soon."}]
    lines = [
        {"input": {"messages": ask}, "preferred_output": right, "non_preferred_output": right},
        {"input": {"messages": ask}, "preferred_output": right, "non_preferred_output": [{"role": "assistant"}]},
        {"input": {"messages": ask + right}, "preferred_output": right, "non_preferred_output": wrong},
    ]
    return [json.dumps(line) for line in lines]


def write_preference_pairs(path: str | Path, n: int = 600, seed: int = 0) -> Path:
    """The set as JSONL (what `rayft data sample --kind preference` writes), with the planted lines
    spread through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(pair, ensure_ascii=False) for pair in preference_pairs(n, seed)]
    for k, planted in enumerate(planted_preference_lines()):
        lines.insert(min(len(lines), (k + 1) * max(1, n // 4)), planted)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path
