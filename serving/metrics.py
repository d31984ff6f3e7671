"""Prometheus metrics of the OpenAI ingress, labelled by the exact model version served.

`model` labels are only ever the base name or a registry ref that resolved (requests for unknown
names count under "-"), so a client cannot blow up label cardinality. Each ingress replica keeps
its own registry and serves it on `/metrics`.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

UNRESOLVED = "-"
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

    def answered(self, model: str, route: str, final: dict) -> None:
        """Count one answered request from the engine's final item."""
        self.requests.labels(model, route).inc()
        self.prompt_tokens.labels(model).inc(final.get("prompt_tokens", 0))
        self.completion_tokens.labels(model).inc(final.get("completion_tokens", 0))
        if final.get("ttft") is not None:
            self.ttft.labels(model).observe(final["ttft"])
        if final.get("tpot") is not None:
            self.tpot.labels(model).observe(final["tpot"])

    def failed(self, model: str | None, status: int) -> None:
        self.errors.labels(model or UNRESOLVED, str(status)).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
