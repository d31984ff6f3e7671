"""Prometheus metrics of the OpenAI ingress, labelled by the exact model version served.

`model` labels are only ever the base name or a registry ref that resolved (requests for unknown
names count under "-"), so a client cannot blow up label cardinality. The label children of a
model are bound once (`ModelMetrics`), so counting a request is an attribute lookup and an add.

Each ingress replica keeps its own registry and serves it on `/metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNRESOLVED = "-"
ROUTES = ("chat", "completion")
CACHE_RESULTS = ("hit", "miss", "bypass")
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1)


class ServingMetrics:
    """Requests, errors by code, TTFT, time per output token, tokens in/out, cache results."""

    def __init__(self):
        self.registry = CollectorRegistry()
        labels = ["model"]
        self.requests = Counter("rayft_requests", "Requests answered", labels + ["route"], registry=self.registry)
        self.errors = Counter("rayft_request_errors", "Requests refused or failed, by HTTP status",
                              labels + ["code"], registry=self.registry)
        self.ttft = Histogram("rayft_time_to_first_token_seconds", "Engine time to the first output token",
                              labels, buckets=LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("rayft_time_per_output_token_seconds", "Engine time per output token after the first",
                              labels, buckets=TOKEN_BUCKETS, registry=self.registry)
        self.prompt_tokens = Counter("rayft_prompt_tokens", "Prompt tokens", labels, registry=self.registry)
        self.completion_tokens = Counter("rayft_completion_tokens", "Generated tokens", labels, registry=self.registry)
        self.cache = Counter("rayft_response_cache", "Response cache lookups by result (hit, miss, bypass)",
                             labels + ["result"], registry=self.registry)
        self.in_flight = Gauge("rayft_requests_in_flight", "Requests being answered by this replica",
                               registry=self.registry)
        self.models: dict[str, ModelMetrics] = {}

    def model(self, name: str) -> ModelMetrics:
        """The metrics of model version `name` (bound on first use)."""
        bound = self.models.get(name)
        if bound is None:
            bound = self.models[name] = ModelMetrics(self, name)
        return bound

    def failed(self, model: str | None, status: int) -> None:
        self.errors.labels(model or UNRESOLVED, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

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

