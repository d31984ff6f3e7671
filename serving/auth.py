"""Who may call what: API keys for the OpenAI routes, admin keys for `/admin/adapters`.

With no API keys the OpenAI routes are open. With admin keys, the admin routes take only them: a
valid API key that is not an admin key is a 403, no key or an unknown one a 401; an admin key is
accepted on the OpenAI routes too. With no admin keys the admin routes take the API keys, as
before admin keys existed (the server warns at start-up that any user can load and unload adapters).
"""

from __future__ import annotations

import hmac

from rayft.serving.errors import ApiError


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


class KeyCheck:
    """Checks a request's bearer key against the configured API and admin keys (empty keys are
    refused when the config is read)."""

    def __init__(self, api_keys: list[str], admin_keys: list[str]):
        self.api_keys, self.admin_keys = frozenset(api_keys), frozenset(admin_keys)

    def user(self, key: str | None) -> None:
        """Raise a 401 unless `key` may use the OpenAI routes."""
        if self.api_keys and not known(key, self.api_keys | self.admin_keys):
            raise ApiError(401, "missing or invalid API key (send 'Authorization: Bearer <key>')",
                           code="invalid_api_key")

    def admin(self, key: str | None) -> None:
        """Raise a 401 or 403 unless `key` may use the admin routes."""
        if not self.admin_keys:
            self.user(key)
        elif not known(key, self.admin_keys):
            if known(key, self.api_keys):
                raise ApiError(403, "this API key may not manage adapters; use an admin key (serve.admin_keys)",
                               code="admin_key_required")
            raise ApiError(401, "missing or invalid admin key (send 'Authorization: Bearer <admin key>')",
                           code="invalid_api_key")

    def warnings(self) -> list[str]:
        """What a start-up log should say about this configuration."""
        said = []
        if not self.api_keys:
            said.append("no API keys configured (serve.api_keys / RAYFT_API_KEYS): the endpoint is open to anyone "
                        "who can reach it")
        if not self.admin_keys:
            said.append("no admin keys configured (serve.admin_keys / RAYFT_ADMIN_KEYS): every API key holder "
                        "(anyone, without API keys) can load and unload adapters")
        return said
