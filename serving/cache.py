"""The response cache for deterministic requests, keyed by what decides the answer.

A request is deterministic when it is greedy (temperature 0) or fixes a `seed`. Its key is a hash
of the exact weights that answer it (the adapter's content hash, or the base's), the route (chat or
completion) and every request field that can change the output. Reloading an adapter whose files
changed gives it a new content hash, so the cache can never hand out what the old weights said
(the stale-result bug of vllm#42125). Only whole (non-streamed) responses are cached, as the JSON
bytes sent, so a hit serialises nothing; a request with `x-rayft-cache: bypass` (or
`Cache-Control: no-cache`) skips the cache both ways.

The hash of an adapter folder is re-checked (file sizes and mtimes) at most every
`RECHECK_S` seconds per folder, and always when an admin load asks for it: files replaced in place
are noticed within a second, by the cache and the engine alike, since both follow the same hash.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections import OrderedDict
from pathlib import Path

from rayft import storage

ADAPTER_FILES = ("adapter_config.json", "*.safetensors")
RECHECK_S = 1.0
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
    """A bounded LRU of response bodies (JSON bytes, as sent)."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.entries: OrderedDict[str, bytes] = OrderedDict()

    def get(self, key: str) -> bytes | None:
        body = self.entries.get(key)
        if body is not None:
            self.entries.move_to_end(key)
        return body

    def put(self, key: str, body: bytes) -> None:
        if self.capacity <= 0:
            return
        self.entries[key] = body
        self.entries.move_to_end(key)
        while len(self.entries) > self.capacity:
            self.entries.popitem(last=False)


class AdapterHashes:
    """Content hashes of adapter folders: the folder is listed and stat'ed at most every
    `recheck_s` seconds (or when `fresh`), and hashed again only when a file's size or mtime changed.

    Object-storage artifacts are not read here: their registry hash (taken at export) stands in.
    """

    def __init__(self, recheck_s: float = RECHECK_S, clock=time.monotonic):
        self.recheck_s, self.clock = recheck_s, clock
        self.known: dict[str, tuple[float, tuple, str]] = {}  # uri -> (checked at, stamp, digest)

    def of(self, uri: str, registered: str | None, fresh: bool = False) -> str:
        """The content hash of the adapter at `uri`; `fresh` re-checks its files now."""
        if storage.is_remote(uri):
            return registered or uri
        now, hit = self.clock(), self.known.get(uri)
        if hit and not fresh and now - hit[0] < self.recheck_s:
            return hit[2]
        folder = Path(uri)
        stamp = tuple(sorted((p.name, s.st_size, s.st_mtime_ns) for p in _adapter_files(folder)
                             for s in [os.stat(p)]))
        digest = hit[2] if hit and hit[1] == stamp else storage.content_hash(folder, ADAPTER_FILES)
        self.known[uri] = (now, stamp, digest)
        return digest


def _adapter_files(folder: Path) -> list[Path]:
    return sorted({p for pattern in ADAPTER_FILES for p in folder.glob(pattern)})
