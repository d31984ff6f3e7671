"""The response cache for deterministic requests, keyed by what decides the answer.

A request is deterministic when it is greedy (temperature 0) or fixes a `seed`. Its key is a hash
of the exact weights that answer it (the adapter's content hash, or the base's), the route (chat or
completion) and every request field that can change the output. Reloading an adapter whose files
changed gives it a new content hash, so the cache can never hand out what the old weights said
(the stale-result bug of vllm#42125). Only whole (non-streamed) responses are cached; a request
with `x-rayft-cache: bypass` (or `Cache-Control: no-cache`) skips the cache both ways.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import OrderedDict
from pathlib import Path

from rayft import storage

ADAPTER_FILES = ("adapter_config.json", "*.safetensors")
# Fields that never change the generated text.
IGNORED_FIELDS = ("model", "user", "stream", "stream_options", "request_id")


def deterministic(body: dict) -> bool:
    """Greedy or seeded sampling: the same request gets the same answer from the same weights."""
    return body.get("temperature") == 0 or body.get("seed") is not None


def cache_key(weights: str, route: str, body: dict) -> str:
    """Key of one response: the weights' hash, the route, and the output-relevant request fields."""
    fields = {k: v for k, v in body.items() if k not in IGNORED_FIELDS}
    text = json.dumps([weights, route, fields], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


class ResponseCache:
    """A bounded LRU of response bodies."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, dict] = OrderedDict()

    def get(self, key: str) -> dict | None:
        body = self.entries.get(key)
        if body is not None:
            self.entries.move_to_end(key)
        return body

    def put(self, key: str, body: dict) -> None:
        if self.capacity <= 0:
            return
        self.entries[key] = body
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class AdapterHashes:
    """Content hashes of adapter folders, recomputed only when a file's size or mtime changes.

    Object-storage artifacts are not read here: their registry hash (taken at export) stands in.
    """

    def __init__(self):
        self.known: dict[str, tuple[tuple, str]] = {}

    def of(self, uri: str, registered: str | None) -> str:
        if storage.is_remote(uri):
            return registered or uri
        folder = Path(uri)
        stamp = tuple(sorted((p.name, s.st_size, s.st_mtime_ns) for p in _adapter_files(folder)
                             for s in [os.stat(p)]))
        hit = self.known.get(uri)
        if hit and hit[0] == stamp:
            return hit[1]
        digest = storage.content_hash(folder, ADAPTER_FILES)
        self.known[uri] = (stamp, digest)
        return digest


def _adapter_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in ADAPTER_FILES for p in folder.glob(pattern)})
