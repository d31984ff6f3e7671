"""Graceful shutdown across every ingress replica: stop taking requests, finish the ones in flight.

`rayft serve` (on SIGTERM, as Kubernetes stops a pod, or Ctrl-C) raises a flag in Ray's GCS
key-value store. Every ingress replica polls it every `POLL_S`: once raised, new requests get a 503
with Retry-After (a load balancer sends them elsewhere), and the replica reports how many requests it
is still answering. The serving process waits until every replica reports none, or
`serve.shutdown_grace_s` has passed, then stops Serve.
"""

from __future__ import annotations

import time

from rayft.serving.metrics import RayKV

POLL_S = 0.25
NAMESPACE = "rayft_drain"
FLAG = "draining"


class DrainBoard:
    """The drain flag and each replica's count of requests in flight, in the GCS."""

    def __init__(self, app: str):
        self.kv, self.prefix = RayKV(NAMESPACE), f"{app}/"

    def start(self) -> None:
        self.kv.put(self.prefix + FLAG, str(time.time()).encode())

    def clear(self) -> None:
        for key in self.kv.keys(self.prefix):
            self.kv.delete(key)

    def requested(self) -> bool:
        return self.kv.get(self.prefix + FLAG) is not None

    def report(self, replica: str, in_flight: int) -> None:
        self.kv.put(f"{self.prefix}in_flight/{replica}", str(in_flight).encode())

    def in_flight(self) -> dict[str, int]:
        """Requests each reporting replica is still answering."""
        counts = {}
        for key in self.kv.keys(f"{self.prefix}in_flight/"):
            value = self.kv.get(key)
            if value is not None:
                counts[key.rsplit("/", 1)[-1]] = int(value)
        return counts

    def wait(self, replicas: int, grace_s: float) -> dict[str, int]:
        """Until `replicas` replicas report no request in flight, or `grace_s` passes; returns the
        last counts (what was still running when the grace ran out)."""
        deadline = time.monotonic() + grace_s
        while True:
            counts = self.in_flight()
            if (len(counts) >= replicas and not any(counts.values())) or time.monotonic() >= deadline:
                return counts
            time.sleep(POLL_S)
