"""What one engine replica holds of the adapter fleet, tier by tier, and what loading them cost.

The tiers, nearest first:
- `engine`: adapters answering requests now, each in one of vLLM's `max_loras` batch slots;
- `host`: adapters loaded in host memory (`max_cpu_loras`, least recently used dropped first, never
  one with requests in flight: `adapters.py`);
- `disk`: adapters fetched from object storage and kept in the node's disk cache
  (`serve.adapter_cache_gb`, by content hash, least recently used removed first: `rayft.storage`);
  an adapter registered on a local path is read from there;
- the registry's storage (a local folder or `s3://`), where every registered adapter is.

Each engine replica counts loads by where the weights came from (`disk`, `storage`), evictions by
tier, load seconds, and the first-token latency of requests that had to wait for their adapter
(`cold`) against those that did not (`warm`). It publishes these series with its adapter list on
the metrics board every PUBLISH_S; `/metrics` and `/admin/adapters` (`rayft adapters list`) read
every replica's from there.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from rayft import storage
from rayft.serving.metrics import LATENCY_BUCKETS, ReplicaMetrics

TIERS = ("engine", "host", "disk")
SOURCES = ("disk", "storage")
ENGINE_PREFIX = "engine-"  # metrics-board key of an engine replica: engine-<replica id>


class FleetMetrics(ReplicaMetrics):
    """An engine replica's adapter series (see module docstring)."""

    def __init__(self, replica: str):
        super().__init__(replica)
        self.resident = Gauge("rayft_adapters_resident", "Adapters held per tier", ["tier"], registry=self.registry)
        self.loads = Counter(
            "rayft_adapter_loads", "Adapter loads, by where the weights came from", ["source"], registry=self.registry
        )
        self.evictions = Counter(
            "rayft_adapter_evictions", "Adapters dropped from a tier to make room", ["tier"], registry=self.registry
        )
        self.load_seconds = Histogram(
            "rayft_adapter_load_seconds",
            "Seconds to fetch, verify and load an adapter, by where the weights came from",
            ["source"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.first_token = Histogram(
            "rayft_adapter_first_token_seconds",
            "Seconds from a request reaching the engine to its first token: cold when it waited for its adapter",
            ["start"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        for source in SOURCES:  # every series present from the start, at 0
            self.loads.labels(source)
            self.load_seconds.labels(source)
        for tier in ("host", "disk"):
            self.evictions.labels(tier)
        for start in ("cold", "warm"):
            self.first_token.labels(start)

    def loaded(self, fetched: storage.Fetched, seconds: float, evicted_from_host: int) -> None:
        self.loads.labels(fetched.source).inc()
        self.load_seconds.labels(fetched.source).observe(seconds)
        self.evictions.labels("disk").inc(fetched.evicted)
        self.evictions.labels("host").inc(evicted_from_host)

    def holding(self, adapters: list[dict], cached: int) -> None:
        """Set the per-tier gauges from the host tier's adapters (`AdapterSlots.describe`) and the
        number of adapters in the disk cache."""
        self.resident.labels("engine").set(sum(1 for a in adapters if a["in_flight"]))
        self.resident.labels("host").set(len(adapters))
        self.resident.labels("disk").set(cached)


def engine_snapshots(snapshots: list[dict]) -> list[dict]:
    """The metrics-board snapshots published by engine replicas (they carry `adapters`)."""
    return [s for s in snapshots if s.get("replica", "").startswith(ENGINE_PREFIX)]


def cached_count() -> int:
    """Adapters (and other artifacts) in this node's disk cache."""
    cache = storage.artifact_cache()
    return sum(1 for entry in cache.iterdir() if not entry.name.startswith(".")) if cache.is_dir() else 0
