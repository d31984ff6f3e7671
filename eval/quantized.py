"""A quantized version in `rayft eval`: what it is judged against, and what the report says of it.

A quantized version (`rayft quantize`) is judged against the model it was made from, not against a
base it should beat: the candidate is the quantized model and the "base" its full-precision source
(its `base_model`), on the same test split and forgetting set. Up to `eval.quantized_adapters`
adapters of the source also answer the test rows on both engines (variant `REF` on the source,
`REF@quantized` on the candidate), since those are the adapters it will serve. The gate bounds how
much worse the candidate and each adapter on it may be (`gate.quantization_checks`). The report
adds the weights' size and each variant's tokens/s on the eval's engine calls.
"""

from __future__ import annotations

import math

from rayft.config import ConfigError
from rayft.eval.results import EvalReport, Quantization
from rayft.registry import ModelVersion, Registry

ON_QUANTIZED = "@quantized"  # suffix of an adapter's variant on the quantized candidate


def quantization_of(version: ModelVersion) -> dict | None:
    """The lineage `rayft quantize` recorded for a quantized version; None for any other."""
    return version.config.get("quantization") if version.kind == "full" else None


def source_adapters(registry: Registry, version: ModelVersion, chosen: int | list[str]) -> list[ModelVersion]:
    """The adapters of the quantized version's source to answer on both (by ref): the refs `chosen`
    names (refused unless each is an adapter of the source), or the latest version of each of the
    `chosen` most recently registered adapter names of the source, of its project or the endpoint's own."""
    if isinstance(chosen, list):
        adapters = [registry.get(ref) for ref in chosen]
        foreign = [a.ref for a in adapters if a.kind != "adapter" or a.base_model != version.base_model]
        if foreign:
            raise ConfigError(f"eval.quantized_adapters: {', '.join(foreign)} are no adapters of {version.parent}")
        return sorted(adapters, key=lambda v: v.ref)
    latest: dict[str, ModelVersion] = {}
    for other in registry.list():  # by name, then version: the last one seen is a name's latest
        if (
            other.kind == "adapter"
            and other.base_model == version.base_model
            and other.project in (None, version.project)
        ):
            latest[other.name] = other
    newest = sorted(latest.values(), key=lambda v: v.created_at, reverse=True)[: max(chosen, 0)]
    return sorted(newest, key=lambda v: v.ref)


def adapter_variants(adapters: list[ModelVersion]) -> list[str]:
    return [name for adapter in adapters for name in (adapter.ref, adapter.ref + ON_QUANTIZED)]


def tokens_per_s(table, variant: str) -> float | None:
    """Answer tokens per second of engine time of `variant` over all its rows."""
    generated, seconds = table[f"generated:{variant}"].sum(), table[f"seconds:{variant}"].sum()
    return round(float(generated) / float(seconds), 1) if seconds and not math.isnan(seconds) else None


def summarize(table, report: EvalReport, lineage: dict, adapters: list[ModelVersion]) -> Quantization:
    """The report's quantization section from the answered rows and the version's lineage."""

    def side(variant: str) -> dict[str, float | None]:
        metrics = report.metrics.get(variant, {})
        return {report.primary_metric: metrics.get(report.primary_metric), "perplexity": metrics.get("perplexity")}

    return Quantization(
        scheme=lineage["scheme"],
        method=lineage["method"],
        source=lineage["source"],
        weights_mib={
            "base": round(lineage["bytes_before"] / 2**20, 2),
            "candidate": round(lineage["bytes_after"] / 2**20, 2),
        },
        tokens_per_s={variant: tokens_per_s(table, variant) for variant in report.metrics},
        adapters={
            adapter.ref: {f"source {k}": v for k, v in side(adapter.ref).items()}
            | {f"quantized {k}": v for k, v in side(adapter.ref + ON_QUANTIZED).items()}
            for adapter in adapters
        },
    )


def markdown_lines(quantization: Quantization) -> list[str]:
    """report.md's paragraph on a quantized candidate."""
    speed = ", ".join(f"{v} {t:.1f}" for v, t in quantization.tokens_per_s.items() if t is not None)
    return [
        "",
        f"Quantized ({quantization.scheme}, {quantization.method}) from `{quantization.source}` (the base here): "
        f"weights {quantization.weights_mib['base']:.2f} MiB → {quantization.weights_mib['candidate']:.2f} MiB; "
        f"answer tokens/s on the eval's engine calls: {speed}. Adapters of the source answer on both "
        f"(`REF` on the source, `REF{ON_QUANTIZED}` on the candidate).",
    ]
