"""Synthetic sample data that ships with rayft: support tickets and a general-chat set.

`support_tickets` is the quickstart's task: a customer writes in, the assistant answers with the
ticket's category and priority and a short reply. Some records carry planted PII, some are exact or
near duplicates and a few lines are malformed, so every part of `rayft data prepare` has work.

`general_chat` is small general-purpose knowledge (arithmetic, capitals, calendar, opposites,
repeating words back). With `support_conversations` (tickets answered with a plain reply, no triage)
it is what a randomly initialised tiny base model is first fully fine-tuned on, so the base knows
the words of the domain but not the task, as a real base model would. Its held-out part is the
forgetting check: a fine-tune should not lose it.
"""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from pathlib import Path

SUPPORT_SYSTEM_PROMPT = "You are a support triage assistant. Classify the ticket, set its priority, and reply briefly."
GENERAL_SYSTEM_PROMPT = "You are a helpful assistant. Answer briefly."

CATEGORIES = {
    "billing": {
        "issues": [
            "I was charged twice for my {plan} subscription this month",
            "my invoice {order} shows the wrong amount",
            "the payment for my {plan} plan failed but the money left my account",
            "I need a copy of the invoice for order {order}",
            "why did my monthly bill go up after the {plan} upgrade",
            "my card was declined when paying for the {plan} plan",
        ],
        "replies": [
            "I have opened a billing review for your account and will correct the charge.",
            "Our billing team will check the invoice and send a corrected copy.",
            "I can see the payment attempt; we will fix the charge within two business days.",
        ],
    },
    "technical": {
        "issues": [
            "the {product} app crashes every time I open the dashboard",
            "I get error {code} when I sync my {product}",
            "the {product} keeps disconnecting from wifi",
            "the export button in {product} does nothing",
            "{product} shows a blank screen after the latest update",
            "the API returns error {code} for every request from {product}",
        ],
        "replies": [
            "Please update {product} to the latest version; our engineers are investigating the error.",
            "I have logged the error with our technical team and will follow up with a fix.",
            "Restarting {product} should clear it; if not, our engineers will take a look.",
        ],
    },
    "account": {
        "issues": [
            "I cannot log in to my account after resetting my password",
            "please change the email address on my account",
            "my account got locked after too many login attempts",
            "how do I enable two-factor authentication on my account",
            "I want to delete my account and all my data",
            "I never received the password reset link",
        ],
        "replies": [
            "I have sent a secure link so you can regain access to your account.",
            "Your account settings have been updated; please sign in again.",
            "For your security, please confirm the request from the link we just emailed.",
        ],
    },
    "shipping": {
        "issues": [
            "my package for order {order} has not arrived yet",
            "the tracking number for order {order} does not work",
            "my {product} was delivered to the wrong address",
            "order {order} arrived damaged",
            "can I change the delivery address for order {order}",
            "the courier marked order {order} as delivered but nothing came",
        ],
        "replies": [
            "I have contacted the courier about order {order} and will update you soon.",
            "A replacement shipment for order {order} is being prepared.",
            "I have updated the delivery details for order {order}.",
        ],
    },
    "refund": {
        "issues": [
            "I want a refund for order {order}",
            "I returned the {product} two weeks ago and still have no refund",
            "please cancel order {order} and refund me",
            "the {product} is not what I expected, can I get my money back",
            "how long does a refund for order {order} take",
            "I was promised a refund for the broken {product}",
        ],
        "replies": [
            "Your refund for order {order} has been approved and will arrive in 5 to 7 days.",
            "I have started the return process; the refund follows once we receive the item.",
            "The refund is on its way to your original payment method.",
        ],
    },
}

PRIORITY_CUES = {
    "urgent": [
        "This is urgent, my whole team is blocked.",
        "URGENT: we lose money every hour.",
        "Our business is down until this is fixed.",
    ],
    "high": ["Please help as soon as possible.", "I need this fixed today.", "This is quite important for me."],
    "medium": ["Could you look into it this week?", "Please let me know what to do.", "I would appreciate an update."],
    "low": ["No rush, whenever you have time.", "Just a small thing, thanks.", "Not urgent at all."],
}
GREETINGS = ["Hi,", "Hello,", "Hello team,", "Hey there,", "Good morning,", "Good afternoon,", "Dear support,", ""]
SIGN_OFFS = ["Thanks", "Regards", "Best", "Cheers", "Thank you", "Kind regards", ""]
CONTEXT = [
    "I have been a customer for {years} years.",
    "This started {days} days ago.",
    "I already tried restarting everything.",
    "My colleague has the same problem.",
    "I am writing from my phone.",
    "I contacted you last week about this too.",
    "It happened right after I changed my settings.",
    "I am on the {plan} plan.",
    "This is the second time this month.",
    "I checked the help center first.",
    "My {product} is about {years} years old.",
    "I live abroad at the moment.",
    "",
    "",
    "",
]
NAMES = ["Ana", "Ben", "Chloe", "Dev", "Elif", "Farid", "Grace", "Hugo", "Ines", "Jon", "Kofi", "Lena"]
PRODUCTS = ["router", "smart watch", "camera", "speaker", "tablet", "thermostat", "laptop", "Pro app"]
PLANS = ["Basic", "Plus", "Pro", "Team", "Enterprise"]
ERROR_CODES = ["E-102", "E-404", "E-500", "E-733", "0x80070005", "ERR_SYNC_9"]


def _planted_pii(rng: random.Random) -> str:
    """One sentence with a realistic (fake) PII value of a random kind."""
    kind = rng.choice(["email", "phone", "card", "ip"])
    if kind == "email":
        return f"You can reach me at {rng.choice(NAMES).lower()}.{rng.randint(10, 99)}@example.com."
    if kind == "phone":
        return f"Call me on +1 415 555 {rng.randint(1000, 9999)}."
    if kind == "card":
        return "The card I used is 4111 1111 1111 1111."
    return f"My IP address is 203.0.113.{rng.randint(1, 254)}."


def _ticket(rng: random.Random, with_pii: bool) -> dict:
    category = rng.choice(sorted(CATEGORIES))
    priority = rng.choice(["low", "medium", "medium", "high", "high", "urgent"])
    fill = {
        "order": f"#{rng.randint(10000, 99999)}",
        "product": rng.choice(PRODUCTS),
        "plan": rng.choice(PLANS),
        "code": rng.choice(ERROR_CODES),
    }
    bank = CATEGORIES[category]
    issue = rng.choice(bank["issues"]).format(**fill)
    context = rng.choice(CONTEXT).format(years=rng.randint(2, 9), days=rng.randint(2, 20), **fill)
    parts = [rng.choice(GREETINGS), issue[0].upper() + issue[1:] + ".", context, rng.choice(PRIORITY_CUES[priority])]
    if with_pii:
        parts.append(_planted_pii(rng))
    parts.append(" ".join(p for p in (rng.choice(SIGN_OFFS), rng.choice(NAMES)) if p))
    reply = rng.choice(bank["replies"]).format(**fill)
    return {
        "messages": [
            {"role": "system", "content": SUPPORT_SYSTEM_PROMPT},
            {"role": "user", "content": " ".join(p for p in parts if p)},
            {"role": "assistant", "content": f"Category: {category}\nPriority: {priority}\n{reply}"},
        ]
    }


def support_tickets(n: int = 2000, seed: int = 0, pii_rate: float = 0.08, dup_rate: float = 0.03) -> list[dict]:
    """`n` support-ticket conversations; `dup_rate` of them repeat an earlier one exactly or nearly."""
    rng = random.Random(seed)
    records: list[dict] = []
    while len(records) < n:
        if records and rng.random() < dup_rate:
            copy = json.loads(json.dumps(rng.choice(records)))
            if rng.random() < 0.5:  # near duplicate: same ticket, one word of punctuation changed
                copy["messages"][1]["content"] = copy["messages"][1]["content"].rstrip(".") + "!"
            records.append(copy)
        else:
            records.append(_ticket(rng, with_pii=rng.random() < pii_rate))
    return records


MALFORMED_LINES = [
    '{"messages": [{"role": "user", "content": "Where is my order?"}',  # truncated JSON
    '["not", "an", "object"]',
    '{"messages": []}',
    '{"messages": [{"role": "customer", "content": "Hello"}, {"role": "assistant", "content": "Hi"}]}',
    '{"messages": [{"role": "user", "content": "Refund please"}]}',
]


def write_support_tickets(path: str | Path, n: int = 2000, seed: int = 0) -> Path:
    """Write the support-ticket sample as JSONL, with a few malformed lines spread through it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r, ensure_ascii=False) for r in support_tickets(n, seed)]
    rng = random.Random(seed + 1)
    for bad in MALFORMED_LINES:
        lines.insert(rng.randrange(len(lines)), bad)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


COUNTRIES = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Kenya": "Nairobi",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Peru": "Lima",
    "Norway": "Oslo",
    "India": "New Delhi",
    "Chile": "Santiago",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Ghana": "Accra",
    "Cuba": "Havana",
    "Austria": "Vienna",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Sweden": "Stockholm",
    "Germany": "Berlin",
    "Mexico": "Mexico City",
    "Thailand": "Bangkok",
    "Turkey": "Ankara",
}
DAYS = ["Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday"]
OPPOSITES = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "up": "down",
    "open": "closed",
    "early": "late",
    "light": "dark",
    "happy": "sad",
    "full": "empty",
    "old": "new",
    "hard": "soft",
    "high": "low",
}


REPEAT_WORDS = [
    "category",
    "priority",
    "billing",
    "technical",
    "account",
    "shipping",
    "refund",
    "low",
    "medium",
    "high",
    "urgent",
    "Category:",
    "Priority:",
    "order",
    "invoice",
    "password",
    "package",
    "error",
]


def _general_pair(rng: random.Random) -> tuple[str, str]:
    kind = rng.choice(["add", "sub", "capital", "day", "opposite", "repeat"])
    if kind == "repeat":
        words = " ".join(rng.choice(REPEAT_WORDS) for _ in range(rng.randint(2, 5)))
        return f"Repeat after me: {words}", words
    if kind == "add":
        a, b = rng.randint(0, 50), rng.randint(0, 50)
        return f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}."
    if kind == "sub":
        a = rng.randint(10, 60)
        b = rng.randint(0, a)
        return f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}."
    if kind == "capital":
        country = rng.choice(sorted(COUNTRIES))
        return f"What is the capital of {country}?", f"The capital of {country} is {COUNTRIES[country]}."
    if kind == "day":
        i = rng.randrange(7)
        return f"Which day comes after {DAYS[i]}?", f"{DAYS[(i + 1) % 7]} comes after {DAYS[i]}."
    word = rng.choice(sorted(OPPOSITES))
    return f"What is the opposite of {word}?", f"The opposite of {word} is {OPPOSITES[word]}."


def general_chat(n: int = 3000, seed: int = 0) -> list[dict]:
    """`n` short general-knowledge conversations in chat `messages` form."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        question, answer = _general_pair(rng)
        out.append(
            {
                "messages": [
                    {"role": "system", "content": GENERAL_SYSTEM_PROMPT},
                    {"role": "user", "content": question},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return out


def support_conversations(n: int = 1500, seed: int = 7) -> list[dict]:
    """Support tickets answered with a plain reply: the domain's language without the triage task."""
    out = []
    for record in support_tickets(n, seed, dup_rate=0.0):
        system, user, assistant = record["messages"]
        reply = assistant["content"].split("\n", 2)[2]
        out.append(
            {
                "messages": [
                    {"role": "system", "content": GENERAL_SYSTEM_PROMPT},
                    user,
                    {"role": "assistant", "content": reply},
                ]
            }
        )
    return out


def write_jsonl(records: list[dict], path: str | Path) -> Path:
    """Write records as JSON lines (UTF-8), creating the parent folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records), encoding="utf-8")
    return path


def tokenizer_corpus(seed: int = 0) -> Iterator[str]:
    """Text the tiny tokenizer is trained on: both sample sets plus the chat roles, and the tool
    set's JSON (tool lists and calls), as a real tokenizer has seen JSON."""
    from rayft.data.tool_samples import tool_corpus

    for record in support_tickets(3000, seed) + general_chat(3000, seed):
        for message in record["messages"]:
            yield f"{message['role']}\n{message['content']}"
    yield from tool_corpus(seed)
