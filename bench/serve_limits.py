"""The `limits` part of serve_throughput.py: what refused requests cost the requests beside them.

On a running server: p99 latency of small sequential completions alone, and while another client
streams requests the server refuses (2 MB prompts refused from their Content-Length, and tiny
invalid ones), ratios per round and their median.
"""

from __future__ import annotations

import json
import statistics
import time

from serve_common import Served, Workload


def limits_part(server: Served, w: Workload) -> dict:
    """On `server`: p99 latency of `w.small_requests` (300) small sequential completion requests alone, and while
    another client sends a stream of 2 MB prompts (each rate of `w.big_prompt_rates`) that the server
    refuses (413, from their Content-Length). Each round measures quiet and every rate side by side; ratios are taken
    per round, and their median reported. For comparison, the same streams of tiny refused requests
    (400, `max_tokens: 0`): what a refusal costs whatever the size."""
    import threading

    import httpx

    url = server.url
    refused_bodies = {
        "2mb": json.dumps({"model": "base", "prompt": "x" * 2_000_000, "max_tokens": 16}).encode(),
        "tiny": json.dumps({"model": "base", "prompt": "x", "max_tokens": 0}).encode(),
    }
    statuses: dict[str, dict[int, int]] = {name: {} for name in refused_bodies}

    def small(n: int) -> list[float]:
        body = {"model": "base", "prompt": "Where is my order?", "max_tokens": 16, "temperature": 0}
        times = []
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                begun = time.perf_counter()
                client.post(f"{url}/v1/completions", json=body, headers={"x-rayft-cache": "bypass"}).raise_for_status()
                times.append(time.perf_counter() - begun)
        return times

    def stream(name: str, rate: int, stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            next_at = time.perf_counter()
            while not stop.is_set():
                status = client.post(
                    f"{url}/v1/completions", content=refused_bodies[name], headers={"content-type": "application/json"}
                ).status_code
                statuses[name][status] = statuses[name].get(status, 0) + 1
                next_at += 1 / rate
                time.sleep(max(0.0, next_at - time.perf_counter()))

    def p99_beside(name: str | None, rate: int = 0) -> float:
        stop = threading.Event()
        sender = threading.Thread(target=stream, args=(name, rate, stop)) if name else None
        if sender:
            sender.start()
        times = small(w.small_requests)
        stop.set()
        if sender:
            sender.join()
        return statistics.quantiles(times, n=100)[98]

    def refusal_seconds(streamed: bool) -> float:
        """How long a 60 MB body takes to be refused: from its Content-Length, or streamed without one
        (refused once serve.max_request_bytes are in)."""
        big = json.dumps({"model": "base", "prompt": "x" * 60_000_000, "max_tokens": 16}).encode()
        body = (big[i : i + (1 << 16)] for i in range(0, len(big), 1 << 16)) if streamed else big
        begun = time.perf_counter()
        status = httpx.post(
            f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=120
        ).status_code
        assert status == 413, status
        return time.perf_counter() - begun

    conditions = [(name, rate) for rate in w.big_prompt_rates for name in refused_bodies]
    small(max(2, w.small_requests // 10))  # warm-up
    one_small = statistics.median(small(max(2, w.small_requests // 15)))
    refusals = {
        "60mb_declared_over_small": statistics.median(refusal_seconds(False) for _ in range(w.refusals)) / one_small,
        "60mb_streamed_over_small": statistics.median(refusal_seconds(True) for _ in range(w.refusals)) / one_small,
    }
    rounds = []
    for r in range(w.rounds):
        quiet = p99_beside(None)
        loud = {f"{name}@{rate}/s": p99_beside(name, rate) for name, rate in conditions[:: 1 if r % 2 == 0 else -1]}
        rounds.append(
            {"quiet_p99_ms": quiet * 1000}
            | {f"{k}_p99_ms": v * 1000 for k, v in loud.items()}
            | {f"ratio {k}": v / quiet for k, v in loud.items()}
        )
    ratios = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k.startswith("ratio")}
    return {
        "rounds": rounds,
        "refused_by_status": statuses,
        "median_ratios_p99_over_quiet": ratios,
        "refusal_time_ratios": refusals,
    }
