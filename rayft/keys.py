"""Bearer keys, read and compared the same way by every rayft HTTP app (serving, the review page).
A leaf module: it imports no stage."""

from __future__ import annotations

import hmac


def bearer_key(authorization: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header value, or None (an empty key is none)."""
    scheme, _, key = authorization.partition(" ")
    return (key.strip() or None) if scheme.lower() == "bearer" else None


def known(key: str | None, keys: frozenset[str]) -> bool:
    """Whether `key` is one of `keys`, comparing every key in constant time (no timing tells how
    much of a guess was right)."""
    if key is None:
        return False
    given = key.encode()
    return any([hmac.compare_digest(given, k.encode()) for k in keys])
