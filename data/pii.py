"""PII detection and scrubbing with typed placeholders (`<EMAIL>`, `<PHONE>`, ...).

One regex per kind finds candidates (skipped when a cheap substring test rules the kind out);
where kinds overlap the earlier kind in PATTERNS wins. Candidates that have a checksum
or a numbering plan are confirmed before they count (payment cards by Luhn, IBANs by ISO 7064
mod 97, phone numbers by libphonenumber, IP addresses by `ipaddress`). A model-based detector for
what patterns cannot see (person names, street addresses) plugs in through `ner_detector`: a
callable `text -> [(start, end, TYPE), ...]`, named in the config as `module:function`.

Not detected without such a detector: names, postal addresses, dates of birth, free-text IDs.
"""

from __future__ import annotations

import importlib
import ipaddress
import re
from collections.abc import Callable, Iterable

import phonenumbers

PLACEHOLDERS = {
    "CREDENTIALS": "<CREDENTIALS>",
    "API_KEY": "<API_KEY>",
    "EMAIL": "<EMAIL>",
    "IBAN": "<IBAN>",
    "CARD": "<CARD>",
    "SSN": "<SSN>",
    "IP": "<IP>",
    "PHONE": "<PHONE>",
}

# Order matters: earlier kinds win where patterns overlap (a card number is not also a phone).
PATTERNS = [
    ("CREDENTIALS", r"(?<=://)[^\s/:@]+:[^\s/@]+(?=@)"),
    (
        "API_KEY",
        r"\b(?:sk-(?:proj-|live-|test-)?[A-Za-z0-9_-]{20,}|sk_(?:live|test)_[A-Za-z0-9]{16,}"
        r"|AKIA[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{36,}|github_pat_[A-Za-z0-9_]{22,}"
        r"|xox[abprs]-[A-Za-z0-9-]{10,}|AIza[0-9A-Za-z_-]{35}"
        r"|eyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,})"
        r"|-----BEGIN [A-Z ]*PRIVATE KEY-----[\s\S]*?-----END [A-Z ]*PRIVATE KEY-----",
    ),
    ("EMAIL", r"\b[A-Za-z0-9._%+-]+@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,}\b"),
    ("IBAN", r"\b[A-Z]{2}\d{2}(?: ?[A-Z0-9]){11,30}\b"),
    ("CARD", r"(?<![\w-])\d(?:[ -]?\d){12,}(?![\w-])"),
    ("SSN", r"\b(?!000|666|9\d\d)\d{3}-(?!00)\d{2}-(?!0000)\d{4}\b"),
    ("IPV6", r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,6}[0-9A-Fa-f]{0,4}(?![\w:.])"),
    ("IP", r"\b(?:(?:25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(?:25[0-5]|2[0-4]\d|1?\d?\d)\b"),
    ("PHONE", r"(?<![\w+(])(?:(?:\+|00)\d{1,3}[ .-]?)?(?:\(\d{1,5}\)[ .-]?)?\d{1,5}(?:[ .-]?\d{2,5}){1,5}(?![\w)])"),
]
COMPILED = [(kind, re.compile(pattern)) for kind, pattern in PATTERNS]
KIND_OF = {"IPV6": "IP"}  # pattern name -> the PII type it reports
CARD_CANDIDATES = dict(COMPILED)["CARD"]
# Cheap substring tests that let most texts skip a pattern entirely.
HAS_DIGIT = re.compile(r"\d")
PREFILTERS: dict[str, Callable[[str], bool]] = {
    "CREDENTIALS": lambda t: "://" in t,
    "API_KEY": lambda t: any(
        p in t for p in ("sk-", "sk_", "AKIA", "gh", "github_pat_", "xox", "AIza", "eyJ", "PRIVATE KEY")
    ),
    "EMAIL": lambda t: "@" in t,
    "IPV6": lambda t: ":" in t,
    "IP": lambda t: "." in t,
}
PHONE_REGIONS = ("US", "GB")  # national numbers (no +CC) are checked against these numbering plans
DATE_LIKE = re.compile(r"\d{4}[-./]\d{1,2}[-./]\d{1,2}|\d{1,2}[-./]\d{1,2}[-./]\d{2,4}")


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        n = int(ch)
        if i % 2:
            n = n * 2 - 9 if n > 4 else n * 2
        total += n
    return total % 10 == 0


def iban_ok(candidate: str) -> bool:
    code = candidate.replace(" ", "")
    if not 15 <= len(code) <= 34:
        return False
    rearranged = code[4:] + code[:4]
    return int("".join(str(int(c, 36)) for c in rearranged)) % 97 == 1


def phone_ok(candidate: str) -> bool:
    """International numbers (+CC or 00CC) of a possible length for their country; national numbers
    of 10 or more digits that are possible in one of PHONE_REGIONS. Dates are not phone numbers."""
    digits = re.sub(r"\D", "", candidate)
    international = candidate.startswith(("+", "00"))
    if not (8 if international else 10) <= len(digits) <= 15 or DATE_LIKE.fullmatch(candidate):
        return False
    regions = (None,) if international else PHONE_REGIONS
    text = "+" + candidate.lstrip("+0") if candidate.startswith("00") else candidate
    for region in regions:
        try:
            if phonenumbers.is_possible_number(phonenumbers.parse(text, region)):
                return True
        except phonenumbers.NumberParseException:
            continue
    return False


def ip_ok(candidate: str) -> bool:
    try:
        ipaddress.ip_address(candidate)
    except ValueError:
        return False
    return True


def card_span(candidate: str) -> tuple[int, int] | None:
    """The longest run of whole digit groups in `candidate` that is a Luhn-valid card number
    (13-19 digits): a card next to other numbers is still found."""
    groups = [(m.start(), m.end(), m.group()) for m in re.finditer(r"\d+", candidate)]
    windows = []
    for i in range(len(groups)):
        digits = ""
        for j in range(i, len(groups)):
            digits += groups[j][2]
            if len(digits) > 19:
                break
            if len(digits) >= 13:
                windows.append((len(digits), i, j, digits))
    for _, i, j, digits in sorted(windows, key=lambda w: -w[0]):
        if luhn_ok(digits):
            return groups[i][0], groups[j][1]
    return None


CONFIRM: dict[str, Callable[[str], bool]] = {
    "IBAN": iban_ok,
    "PHONE": phone_ok,
    "IP": ip_ok,
    "IPV6": ip_ok,
}


def find_pii(
    text: str, ner: Callable[[str], Iterable[tuple[int, int, str]]] | None = None
) -> list[tuple[int, int, str]]:
    """Confirmed PII spans `(start, end, TYPE)` in `text`, non-overlapping, in order."""
    spans: list[tuple[int, int, str]] = []
    if not HAS_DIGIT.search(text) and "@" not in text and "://" not in text and not PREFILTERS["API_KEY"](text):
        found: Iterable[tuple[int, int, str]] = []
    else:
        found = [
            (m.start(), m.end(), KIND_OF.get(kind, kind))
            for kind, pattern in COMPILED
            if kind != "CARD" and PREFILTERS.get(kind, _has_digit)(text)
            for m in pattern.finditer(text)
            if kind not in CONFIRM or CONFIRM[kind](m.group())
        ]
        found[:0] = _cards(text)
    for start, end, kind in list(found) + (list(ner(text)) if ner else []):
        if not any(start < e and s < end for s, e, _ in spans):  # earlier kinds win overlaps
            spans.append((start, end, kind))
    return sorted(spans)


def _cards(text: str) -> list[tuple[int, int, str]]:
    spans = []
    for match in CARD_CANDIDATES.finditer(text):
        inner = card_span(match.group())
        if inner:
            spans.append((match.start() + inner[0], match.start() + inner[1], "CARD"))
    return spans


def _has_digit(text: str) -> bool:
    return HAS_DIGIT.search(text) is not None


def scrub(text: str, ner=None) -> tuple[str, dict[str, int]]:
    """`text` with each PII span replaced by its placeholder, and the count of each type."""
    spans = find_pii(text, ner)
    if not spans:
        return text, {}
    counts: dict[str, int] = {}
    parts, last = [], 0
    for start, end, kind in spans:
        parts.append(text[last:start])
        parts.append(PLACEHOLDERS.get(kind, f"<{kind}>"))
        counts[kind] = counts.get(kind, 0) + 1
        last = end
    parts.append(text[last:])
    return "".join(parts), counts


def load_detector(spec: str | None):
    """The NER detector named `module:function`, or None."""
    if not spec:
        return None
    module, _, name = spec.partition(":")
    if not name:
        raise ValueError(f"data.pii_detector must be 'module:function', got {spec!r}")
    return getattr(importlib.import_module(module), name)
