"""Who may call what: API keys for the OpenAI routes, admin keys for `/admin/adapters`, where the
keys come from, and where a server without keys may listen.

Keys come from the config (`serve.api_keys`, `serve.admin_keys`, and each project's
`serve.projects.NAME.keys`), `RAYFT_API_KEYS` / `RAYFT_ADMIN_KEYS` and the files `*_FILE` names. With
no API keys the OpenAI routes are open, and only a loopback host may be served so unless the config
says `serve.allow_unauthenticated`. With admin keys, the admin routes take only them: a valid API key
that is not an admin key is a 403, no key or an unknown one a 401; an admin key is accepted on the
OpenAI routes too. With no admin keys the admin routes take the API keys (the server warns at
start-up that any user can load and unload adapters).
"""

from __future__ import annotations

import os
from pathlib import Path

from rayft.config import ConfigError, ServeConfig
from rayft.keys import bearer_key, known  # noqa: F401  (bearer_key: re-exported)
from rayft.serving.errors import ApiError

API_KEYS_ENV = "RAYFT_API_KEYS"
ADMIN_KEYS_ENV = "RAYFT_ADMIN_KEYS"
LOOPBACK = ("127.0.0.1", "localhost", "::1")


class KeyCheck:
    """Checks a request's bearer key against the configured API and admin keys (empty keys are
    refused when the config is read)."""

    def __init__(self, api_keys: list[str], admin_keys: list[str]):
        self.api_keys, self.admin_keys = frozenset(api_keys), frozenset(admin_keys)

    def user(self, key: str | None) -> None:
        """Raise a 401 unless `key` may use the OpenAI routes."""
        if self.api_keys and not known(key, self.api_keys | self.admin_keys):
            raise ApiError(
                401, "missing or invalid API key (send 'Authorization: Bearer <key>')", code="invalid_api_key"
            )

    def admin(self, key: str | None) -> None:
        """Raise a 401 or 403 unless `key` may use the admin routes."""
        if not self.admin_keys:
            self.user(key)
        elif not known(key, self.admin_keys):
            if known(key, self.api_keys):
                raise ApiError(
                    403,
                    "this API key may not manage adapters; use an admin key (serve.admin_keys)",
                    code="admin_key_required",
                )
            raise ApiError(
                401, "missing or invalid admin key (send 'Authorization: Bearer <admin key>')", code="invalid_api_key"
            )

    def is_admin(self, key: str | None) -> bool:
        """Whether `key` is one of the configured admin keys (none configured: nobody is)."""
        return bool(self.admin_keys) and known(key, self.admin_keys)

    def warnings(self) -> list[str]:
        """What a start-up log should say about this configuration."""
        said = []
        if not self.api_keys:
            said.append(
                "no API keys configured (serve.api_keys / RAYFT_API_KEYS): the endpoint is open to anyone "
                "who can reach it"
            )
        if not self.admin_keys:
            said.append(
                "no admin keys configured (serve.admin_keys / RAYFT_ADMIN_KEYS): every API key holder "
                "(anyone, without API keys) can load and unload adapters"
            )
        return said


def keys_from(configured: list[str], env: str) -> list[str]:
    """`configured` keys plus those in the environment variable `env` (comma-separated) and in the
    file `env`_FILE names (one per line or comma-separated: how Kubernetes secret volumes and the
    cluster launcher's file mounts deliver secrets). Blank entries are not keys."""
    text = os.environ.get(env, "")
    if os.environ.get(f"{env}_FILE"):
        path = Path(os.environ[f"{env}_FILE"])
        if not path.is_file():
            raise ConfigError(f"{env}_FILE: {path} is not a file")
        text += "," + path.read_text(encoding="utf-8").replace("\n", ",")
    return list(dict.fromkeys(configured + [k.strip() for k in text.split(",") if k.strip()]))


def api_keys(serve_config: ServeConfig) -> list[str]:
    """Keys of the OpenAI routes: `serve.api_keys`, `RAYFT_API_KEYS` and `RAYFT_API_KEYS_FILE`."""
    return keys_from(serve_config.api_keys, API_KEYS_ENV)


def admin_keys(serve_config: ServeConfig) -> list[str]:
    """Keys of the admin routes: `serve.admin_keys`, `RAYFT_ADMIN_KEYS` and `RAYFT_ADMIN_KEYS_FILE`."""
    return keys_from(serve_config.admin_keys, ADMIN_KEYS_ENV)


def check_exposure(serve_config: ServeConfig) -> None:
    """Refuse to listen where other machines can reach without keys, unless the config says so."""
    keyed = api_keys(serve_config) or serve_config.projects
    if serve_config.host not in LOOPBACK and not keyed and not serve_config.allow_unauthenticated:
        raise ConfigError(
            f"serve.host {serve_config.host} can be reached from other machines and no API keys are set "
            "(serve.api_keys or RAYFT_API_KEYS): anyone could use every model and, without admin "
            "keys, load and unload adapters. Set keys, or serve.allow_unauthenticated: true"
        )
