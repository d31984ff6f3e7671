"""Prometheus series between two scrapes of `GET /metrics` (the bench's view of the server's own
counters and histograms): sums over replicas and labels, and histogram quantiles as Prometheus'
`histogram_quantile` computes them."""

from __future__ import annotations


def scrape(url: str) -> list[tuple[str, dict, float]]:
    """Every sample of `GET /metrics`: (name, labels, value)."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{url}/metrics", timeout=60).raise_for_status().text
    return [(s.name, s.labels, s.value) for f in text_string_to_metric_families(text) for s in f.samples]


def total(samples: list, name: str, **labels: str) -> float:
    """The sum of `name` over the samples with `labels` (over replicas, and any other label)."""
    return sum(v for n, ls, v in samples if n == name and all(ls.get(k) == x for k, x in labels.items()))


def buckets(samples: list, name: str, **labels: str) -> dict[float, float]:
    """Cumulative counts of histogram `name` by upper bound, summed over the samples with `labels`."""
    counts: dict[float, float] = {}
    for n, ls, v in samples:
        if n == f"{name}_bucket" and all(ls.get(k) == x for k, x in labels.items()):
            counts[float(ls["le"])] = counts.get(float(ls["le"]), 0) + v
    return counts


def histogram_quantile(before: list, after: list, name: str, q: float, **labels: str) -> float | None:
    """The q-quantile of histogram `name` between two scrapes, linear within its bucket (as
    Prometheus' histogram_quantile); None without observations."""
    earlier, later = buckets(before, name, **labels), buckets(after, name, **labels)
    bounds = sorted(later)
    counts = [later[b] - earlier.get(b, 0) for b in bounds]
    if not counts or counts[-1] <= 0:
        return None
    rank, lower, below = q * counts[-1], 0.0, 0.0
    for bound, count in zip(bounds, counts):
        if count >= rank:
            return lower if bound == float("inf") else lower + (bound - lower) * (rank - below) / (count - below)
        lower, below = bound, count
    return lower
