"""The response cache for deterministic requests, keyed by what decides the answer.

A request is deterministic when it is greedy (temperature 0) or fixes a `seed`. Its key is a hash
of who asks (the API key's tenant, unless `serve.share_response_cache`), the model version answering
it, its weights hash (the registry's content hash of every file of the artifact,
`storage.content_hash`), the route (chat or completion) and every request field that can change the
output, so two versions never share an entry (the stale-result bug of vllm#42125) and no tenant
learns from a hit what another asked. Only whole (non-streamed) responses are cached, as the JSON
bytes sent; a hit only writes its own `id` and `created` into them. A request with
`x-rayft-cache: bypass` (or `Cache-Control: no-cache`) skips the cache both ways.

`ArtifactHashes` gives the content hash of a local artifact folder as it is now, re-checked (file
sizes and mtimes) at most every `RECHECK_S` seconds per folder and always when an admin load asks:
the ingress compares it with the registered hash and refuses a version whose files changed.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

from rayft import storage

ADAPTER_FILES = ("adapter_config.json", "*.safetensors")
RECHECK_S = 1.0
# Fields that never change the generated text.
IGNORED_FIELDS = ("model", "user", "stream", "stream_options", "request_id")


def deterministic(body: dict) -> bool:
    """Greedy or seeded sampling: the same request gets the same answer from the same weights."""
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(tenant: str, model: str, weights: str, route: str, body: dict) -> str:
    """Key of one response: who asks, the version served, its weights' hash, the route, and the
    output-relevant request fields."""
    fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    text = json.dumps([tenant, model, weights, route, fields], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def tenant_of(key: str | None) -> str:
    """Who a request's cache entries belong to: a digest of its API key (never the key itself)."""
    return hashlib.sha256(key.encode()).hexdigest()[:16] if key else "anonymous"


@dataclass(frozen=True)
class CachedAnswer:
    """A whole response as sent (JSON bytes), with the `id` and `created` written into them and the
    tenant whose request filled it."""

    body: bytes
    request_id: str
    created: int
    filled_by: str

    def renewed(self, request_id: str, created: int) -> bytes:
        """The same answer under another request's `id` and `created` (each appears once)."""
        return self.body.replace(f'"{self.request_id}"'.encode(), f'"{request_id}"'.encode(), 1).replace(
            f'"created":{self.created}'.encode(), f'"created":{created}'.encode(), 1
        )


class ResponseCache:
    """A bounded LRU of whole answers."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, CachedAnswer] = OrderedDict()

    def get(self, key: str) -> CachedAnswer | None:
        answer = self.entries.get(key)
        if answer is not None:
            self.entries.move_to_end(key)
        return answer

    def put(self, key: str, body: CachedAnswer) -> None:
        if self.capacity <= 0:
            return
        self.entries[key] = body
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class ArtifactHashes:
    """Content hashes of local artifact folders: a folder is listed and stat'ed at most every
    `recheck_s` seconds (or when `fresh`), and hashed again only when a file's size or mtime changed."""

    def __init__(self, recheck_s: float = RECHECK_S, clock=time.monotonic):
        self.recheck_s, self.clock = recheck_s, clock
        self.known: dict[str, tuple[float, tuple, str]] = {}  # folder -> (checked at, stamp, digest)

    def of(self, folder: str, fresh: bool = False) -> str:
        """The content hash of the folder as it is now; `fresh` re-checks its files now."""
        now, hit = self.clock(), self.known.get(folder)
        if hit and not fresh and now - hit[0] < self.recheck_s:
            return hit[2]
        root = Path(folder)
        stamp = tuple(
            (name, s.st_size, s.st_mtime_ns) for name in storage.file_names(root) for s in [os.stat(root / name)]
        )
        digest = hit[2] if hit and hit[1] == stamp else storage.content_hash(root)
        self.known[folder] = (now, stamp, digest)
        return digest
