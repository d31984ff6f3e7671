"""How a config error reads: the file, then each bad field as a dotted name with pydantic's
message, and what was given when it is one plain value. Never a key: a field that holds keys is
never echoed, and every key the file (or `RAYFT_*_KEYS`) holds is replaced by `***` in the whole
message. A leaf module."""

from __future__ import annotations

import os

from pydantic import ValidationError

# Fields whose values are keys: an error about them never shows what was given.
SECRET_FIELDS = frozenset({"api_keys", "admin_keys", "keys", "reviewers"})
KEY_VARIABLES = ("RAYFT_API_KEYS", "RAYFT_ADMIN_KEYS", "RAYFT_REVIEWER_KEYS")


def secrets_in(value, secret: bool = False) -> set[str]:
    """Every string held under a secret field of a config mapping (as written, before validation):
    what no error message may contain."""
    if isinstance(value, dict):
        return set().union(*(secrets_in(item, secret or name in SECRET_FIELDS) for name, item in value.items()))
    if isinstance(value, list):
        return set().union(*(secrets_in(item, secret) for item in value))
    return {value} if secret and isinstance(value, str) else set()


def redacted(text: str, secrets: set[str]) -> str:
    """`text` with every secret (longest first) replaced by `***`."""
    for secret in sorted((s for s in secrets if s.strip()), key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def format_errors(source: str, error: ValidationError, data=None) -> str:
    lines = [f"{source}: invalid config"]
    for item in error.errors():
        field = ".".join(str(p) for p in item["loc"]) or "(top level)"
        # What was given is shown when it is one value, never a whole section or a key.
        shown = not isinstance(item["input"], (dict, list)) and not any(str(p) in SECRET_FIELDS for p in item["loc"])
        got = f" (got {item['input']!r})" if item["type"] not in ("missing", "extra_forbidden") and shown else ""
        message = "unknown field" if item["type"] == "extra_forbidden" else item["msg"]
        lines.append(f"  {field}: {message}{got}")
    hidden = secrets_in(data) | {
        key.strip()
        for name in KEY_VARIABLES
        for entry in os.environ.get(name, "").split(",")
        for key in entry.split("=")
    }
    return redacted("\n".join(lines), hidden)
