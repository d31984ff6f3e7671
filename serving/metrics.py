"""Prometheus metrics of the OpenAI ingress, labelled by the exact model version served and by replica.

`model` labels are only ever the base name or a registry ref that resolved (requests for unknown
names count under "-"), so a client cannot blow up label cardinality. The label children of a
model are bound once (`ModelMetrics`), so counting a request is an attribute lookup and an add.

Serve sends each scrape of `/metrics` to one ingress replica, so with several replicas each one
publishes a snapshot of its series every `PUBLISH_S` seconds to Ray's internal key-value store in
the GCS (`MetricsBoard`), and `/metrics` answers with its own series, fresh, plus the latest snapshot
of every other live replica. Every series carries a `replica` label, so series of different
replicas never collide and summing over `replica` gives the deployment's totals. A snapshot older
than `STALE_S` belongs to a replica that is gone: it is dropped, and Prometheus sees those series
end, as when a process restarts.
"""

from __future__ import annotations

import json
import time
from types import SimpleNamespace

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.metrics_core import Metric

UNRESOLVED = "-"
ROUTES = ("chat", "completion")
CACHE_RESULTS = ("hit", "miss", "bypass")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)
PUBLISH_S = 2.0
STALE_S = 10.0
KV_NAMESPACE = "rayft_metrics"


class ReplicaMetrics:
    """One replica's Prometheus series, each labelled with `replica`, and their snapshot for the
    board (`MetricsBoard`) that `/metrics` merges."""

    def __init__(self, replica: str = "0"):
        self.replica = replica
        self.registry = CollectorRegistry()

    def families(self) -> list[Metric]:
        """This replica's metric families, every sample labelled with `replica`."""
        labelled = []
        for family in self.registry.collect():
            copy = Metric(family.name, family.documentation, family.type, family.unit)
            copy.samples = [s._replace(labels={**s.labels, "replica": self.replica}) for s in family.samples]
            labelled.append(copy)
        return labelled

    def snapshot(self) -> dict:
        """This replica's series as JSON-ready data, for other replicas to serve (`MetricsBoard`)."""
        return {
            "at": time.time(),
            "families": [
                [f.name, f.documentation, f.type, f.unit, [[s.name, s.labels, s.value] for s in f.samples]]
                for f in self.families()
            ],
        }


class ServingMetrics(ReplicaMetrics):
    """Requests, errors by code, TTFT, time per output token, tokens in/out, cache results."""

    def __init__(self, replica: str = "0"):
        super().__init__(replica)
        labels = ["model"]
        self.requests = Counter("rayft_requests", "Requests answered", labels + ["route"], registry=self.registry)
        self.errors = Counter(
            "rayft_request_errors",
            "Requests refused or failed, by HTTP status",
            labels + ["code"],
            registry=self.registry,
        )
        self.ttft = Histogram(
            "rayft_time_to_first_token_seconds",
            "Engine time to the first output token",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tpot = Histogram(
            "rayft_time_per_output_token_seconds",
            "Engine time per output token after the first",
            labels,
            buckets=TOKEN_BUCKETS,
            registry=self.registry,
        )
        self.prompt_tokens = Counter("rayft_prompt_tokens", "Prompt tokens", labels, registry=self.registry)
        self.completion_tokens = Counter("rayft_completion_tokens", "Generated tokens", labels, registry=self.registry)
        self.cache = Counter(
            "rayft_response_cache",
            "Response cache lookups by result (hit, miss, bypass)",
            labels + ["result"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "rayft_requests_in_flight", "Requests being answered by this replica", registry=self.registry
        )
        self.models: dict[str, ModelMetrics] = {}

    def model(self, name: str) -> ModelMetrics:
        """The metrics of model version `name` (bound on first use)."""
        bound = self.models.get(name)
        if bound is None:
            bound = self.models[name] = ModelMetrics(self, name)
        return bound

    def failed(self, model: str | None, status: int) -> None:
        self.errors.labels(model or UNRESOLVED, str(status)).inc()

    def exposition(self, others: list[dict] = ()) -> bytes:
        """Prometheus text of this replica's series plus those of `others` (snapshots), one family each."""
        merged: dict[str, Metric] = {}
        for family in self.families() + [f for snapshot in others for f in _families_of(snapshot)]:
            into = merged.setdefault(family.name, Metric(family.name, family.documentation, family.type, family.unit))
            into.samples += family.samples
        return generate_latest(SimpleNamespace(collect=lambda: list(merged.values())))


class ModelMetrics:
    """The label children of one model version."""

    def __init__(self, metrics: ServingMetrics, model: str):
        self.requests = {route: metrics.requests.labels(model, route) for route in ROUTES}
        self.cache = {result: metrics.cache.labels(model, result) for result in CACHE_RESULTS}
        self.prompt_tokens = metrics.prompt_tokens.labels(model)
        self.completion_tokens = metrics.completion_tokens.labels(model)
        self.ttft = metrics.ttft.labels(model)
        self.tpot = metrics.tpot.labels(model)

    def answered(self, route: str, final: dict) -> None:
        """Count one request answered by the engine, from its final item."""
        self.requests[route].inc()
        self.prompt_tokens.inc(final.get("prompt_tokens", 0))
        self.completion_tokens.inc(final.get("completion_tokens", 0))
        if final.get("ttft") is not None:
            self.ttft.observe(final["ttft"])
        if final.get("tpot") is not None:
            self.tpot.observe(final["tpot"])


def _families_of(snapshot: dict) -> list[Metric]:
    families = []
    for name, documentation, kind, unit, samples in snapshot["families"]:
        family = Metric(name, documentation, kind, unit)
        for sample_name, labels, value in samples:
            family.add_sample(sample_name, labels, value)
        families.append(family)
    return families


class MetricsBoard:
    """Where the ingress replicas of one app share their snapshots: one key per replica in a
    key-value store (Ray's internal KV by default; the calls block on the GCS, run them in a thread)."""

    def __init__(self, app: str, replica: str, kv=None):
        self.prefix, self.key = f"{app}/", f"{app}/{replica}"
        self.kv = kv or RayKV()

    def publish(self, snapshot: dict) -> None:
        self.kv.put(self.key, json.dumps(snapshot).encode())

    def others(self) -> list[dict]:
        """The latest snapshot of every other live replica; stale ones are deleted."""
        fresh, now = [], time.time()
        for key in self.kv.keys(self.prefix):
            raw = self.kv.get(key) if key != self.key else None
            if raw is None:
                continue
            snapshot = json.loads(raw)
            if now - snapshot["at"] > STALE_S:
                self.kv.delete(key)
            else:
                fresh.append(snapshot)
        return fresh

    def withdraw(self) -> None:
        """Remove this replica's snapshot (at graceful shutdown)."""
        self.kv.delete(self.key)


class RayKV:
    """Ray's internal key-value store (GCS), in its own namespace."""

    def __init__(self, namespace: str = KV_NAMESPACE):
        from ray.experimental import internal_kv

        self.store, self.namespace = internal_kv, namespace

    def put(self, key: str, value: bytes) -> None:
        self.store._internal_kv_put(key, value, namespace=self.namespace)

    def get(self, key: str) -> bytes | None:
        return self.store._internal_kv_get(key, namespace=self.namespace)

    def keys(self, prefix: str) -> list[str]:
        return [k.decode() for k in self.store._internal_kv_list(prefix, namespace=self.namespace)]

    def delete(self, key: str) -> None:
        self.store._internal_kv_del(key, namespace=self.namespace)


def drift_exposition(scores: list[dict]) -> bytes:
    """The latest drift scores `rayft drift` recorded (`rayft.feedback`), per version and feature:
    `rayft_drift_score` (population stability index; `max` is the version's score) and
    `rayft_drift_detected` (1 when that feature drifted), for alerts."""
    registry = CollectorRegistry()
    score = Gauge(
        "rayft_drift_score", "Drift of recent traffic from the training data", ["model", "feature"], registry=registry
    )
    detected = Gauge("rayft_drift_detected", "1 when the feature drifted", ["model", "feature"], registry=registry)
    for row in scores:
        score.labels(row["ref"], row["feature"]).set(row["score"])
        detected.labels(row["ref"], row["feature"]).set(row["drifted"])
    return generate_latest(registry)
