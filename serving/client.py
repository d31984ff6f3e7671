"""Admin calls to a running `rayft serve` over HTTP: `rayft adapters list|load|unload`.

They send the admin key: the one given, else `$RAYFT_ADMIN_KEY`, else `$RAYFT_API_KEY` (servers
without `serve.admin_keys` take API keys on the admin routes).
"""

from __future__ import annotations

import os

DEFAULT_URL = "http://127.0.0.1:8000"


class AdminError(RuntimeError):
    """The server refused or could not be reached; the message says which and why."""


def admin_call(
    method: str, path: str, url: str | None = None, api_key: str | None = None, body: dict | None = None
) -> dict:
    """One admin request; the server's JSON answer, or AdminError with its error message."""
    import httpx

    url = (url or os.environ.get("RAYFT_SERVE_URL") or DEFAULT_URL).rstrip("/")
    key = api_key or os.environ.get("RAYFT_ADMIN_KEY") or os.environ.get("RAYFT_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    try:
        response = httpx.request(method, url + path, json=body, headers=headers, timeout=300)
    except httpx.HTTPError as error:
        raise AdminError(f"cannot reach rayft serve at {url}: {error}") from None
    if response.status_code >= 400:
        try:
            message = response.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = response.text
        raise AdminError(f"{response.status_code}: {message}")
    return response.json()


def load_adapter(ref: str, url: str | None = None, api_key: str | None = None) -> dict:
    """Load the adapter a registry ref names into the running server (no restart)."""
    return admin_call("POST", "/admin/adapters", url, api_key, {"model": ref})


def unload_adapter(ref: str, url: str | None = None, api_key: str | None = None) -> dict:
    """Drop an adapter from the running server's engine."""
    return admin_call("DELETE", f"/admin/adapters/{ref}", url, api_key)


def fleet(url: str | None = None, api_key: str | None = None) -> dict:
    """The server's adapters by tier and replica (`data`, least recently used first per replica) and
    its disk cache (`disk`): the answer of `GET /admin/adapters`."""
    return admin_call("GET", "/admin/adapters", url, api_key)


def fleet_table(answer: dict):
    """`rayft adapters list`'s table: one row per adapter and engine replica, then the disk cache."""
    from rich.table import Table

    table = Table(title=f"adapters on {len(answer['replicas'])} engine replica(s), least recently used first")
    for column in ("adapter", "tier", "replica", "in flight", "weights hash"):
        table.add_column(column)
    for row in answer["data"]:
        table.add_row(row["ref"], row["tier"], row["replica"][-8:], str(row["in_flight"]), row["digest"][:12])
    for item in answer["disk"]:
        table.add_row("", "disk", "", "", item["digest"][:12])
    table.caption = f"{answer['running']} requests running; disk cache: {len(answer['disk'])} adapters"
    return table
