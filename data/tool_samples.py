"""A synthetic function-calling set in OpenAI's fine-tuning format: support requests over one tool
list (look up an order, open a ticket, escalate), each answered with the call the request needs,
then (for most) the tool's result and a short reply. Offline, seeded, for tests and the quickstart.
A few lines are planted that validation must reject: a call to an undeclared tool, arguments that
are not JSON, a tool turn answering no call; and one line whose arguments were encoded twice.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

from rayft.data.samples import NAMES, PRODUCTS

SYSTEM = "You are a support assistant. Use the tools when a request needs them."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_order_status",
            "description": "Look up where an order is.",
            "parameters": {
                "type": "object",
                "properties": {"order_id": {"type": "string", "description": "the order number"}},
                "required": ["order_id"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "open_ticket",
            "description": "Open a support ticket for a product problem.",
            "parameters": {
                "type": "object",
                "properties": {
                    "product": {"type": "string"},
                    "summary": {"type": "string"},
                },
                "required": ["product", "summary"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "escalate",
            "description": "Hand a conversation to a human agent.",
            "parameters": {
                "type": "object",
                "properties": {"reason": {"type": "string", "enum": ["angry", "legal", "refund"]}},
                "required": ["reason"],
            },
        },
    },
]
PROBLEMS = ["does not turn on", "keeps restarting", "shows error E-404", "will not charge", "lost its settings"]


def _request(rng: random.Random) -> tuple[str, str, dict, str, str]:
    """(user text, tool name, arguments, tool result, final answer)."""
    kind = rng.choice(["get_order_status", "open_ticket", "escalate"])
    name = rng.choice(NAMES)
    if kind == "get_order_status":
        order = str(rng.randint(10000, 99999))
        text = rng.choice(["Where is my order {o}?", "Has order {o} shipped yet?", "Any news on order #{o}?"])
        status = rng.choice(["shipped", "in transit", "delayed"])
        return (
            text.format(o=order),
            kind,
            {"order_id": order},
            json.dumps({"status": status}),
            f"Order {order} is {status}.",
        )
    if kind == "open_ticket":
        product, problem = rng.choice(PRODUCTS), rng.choice(PROBLEMS)
        text = rng.choice(["My {p} {q}.", "Hi, I'm {n}. The {p} {q}, please help.", "The {p} {q} since yesterday."])
        ticket = f"T-{rng.randint(1000, 9999)}"
        arguments = {"product": product, "summary": f"{product} {problem}"}
        return (
            text.format(p=product, q=problem, n=name),
            kind,
            arguments,
            json.dumps({"ticket": ticket}),
            f"I opened {ticket} for you.",
        )
    reason = rng.choice(["angry", "legal", "refund"])
    text = {
        "angry": "This is the third time I write, I want a human now!",
        "legal": "My lawyer will contact you about this contract.",
        "refund": "I want my money back for this order, today.",
    }[reason]
    return (
        f"{text} ({name})",
        kind,
        {"reason": reason},
        json.dumps({"queued": True}),
        "A colleague will take over shortly.",
    )


def tool_conversations(n: int = 300, seed: int = 0, answered_share: float = 0.5) -> list[dict]:
    """`n` records: a request, the call it needs; `answered_share` of them go on with the tool's
    result and the reply (the others end with the call: what eval asks the model for)."""
    rng = random.Random(seed)
    records = []
    for i in range(n):
        text, tool, arguments, result, answer = _request(rng)
        call = {"id": f"call_{i}", "type": "function", "function": {"name": tool, "arguments": json.dumps(arguments)}}
        messages = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": text},
            {"role": "assistant", "content": None, "tool_calls": [call]},
        ]
        if rng.random() < answered_share:
            messages += [
                {"role": "tool", "tool_call_id": call["id"], "content": result},
                {"role": "assistant", "content": answer},
            ]
        records.append({"messages": messages, "tools": TOOLS, "parallel_tool_calls": False})
    return records


def planted_tool_lines() -> list[str]:
    """Lines validation must reject (unknown tool, arguments not JSON, a tool turn answering no
    call) and one it keeps with a warning (arguments encoded twice)."""
    ask = {"role": "user", "content": "Where is order 12345?"}

    def call(name: str, arguments: str) -> dict:
        return {
            "role": "assistant",
            "content": None,
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}],
        }

    lines = [
        {"messages": [ask, call("cancel_order", '{"order_id": "12345"}')], "tools": TOOLS},
        {"messages": [ask, call("get_order_status", "{order_id: 12345")], "tools": TOOLS},
        {
            "messages": [
                ask,
                {"role": "tool", "tool_call_id": "c9", "content": "{}"},
                {"role": "assistant", "content": "Done."},
            ],
            "tools": TOOLS,
        },
        {"messages": [ask, call("get_order_status", json.dumps(json.dumps({"order_id": "12345"})))], "tools": TOOLS},
    ]
    return [json.dumps(line) for line in lines]


def write_tool_calls(path: str | Path, n: int = 300, seed: int = 0) -> Path:
    """The set as JSONL, with the planted lines spread through it."""
    path = Path(path)
    lines = [json.dumps(r) for r in tool_conversations(n, seed)]
    for k, planted in enumerate(planted_tool_lines()):
        lines.insert(min(len(lines), (k + 1) * max(1, n // 5)), planted)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def tool_corpus(seed: int = 0) -> list[str]:
    """The tool set's JSON as the tiny tokenizer should know it: the tool list, and calls."""
    texts = [json.dumps(tool) for tool in TOOLS] * 20
    for record in tool_conversations(600, seed):
        call = record["messages"][2]["tool_calls"][0]["function"]
        texts.append(json.dumps({"name": call["name"], "arguments": json.loads(call["arguments"])}))
    return texts
