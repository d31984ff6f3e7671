"""The eval report's PNG plots: metric bars per variant, confusion matrices, the distribution of
preference-pair margins, the training loss curve."""

from __future__ import annotations

import json
from pathlib import Path

from rayft import storage
from rayft.config import TASK_METRICS
from rayft.eval.drift_features import FeatureDrift
from rayft.eval.results import EvalReport

COLORS = {"base": "#9e9e9e", "few_shot": "#64b5f6", "candidate": "#2e7d32"}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(figure, path: Path) -> Path:
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    _pyplot().close(figure)
    return path


def metric_panels(report: EvalReport) -> list[tuple[str, dict]]:
    """[(metric, {variant: value})] for the metric bars: the task's metrics, the pair metrics (on
    preference pairs, whatever the task) and perplexity (each once), then the forgetting set's answer
    rate; metrics no variant has are left out."""
    names = dict.fromkeys(TASK_METRICS[report.task] + TASK_METRICS["preference"] + ("perplexity",))
    panels = [(name, {v: m.get(name) for v, m in report.metrics.items()}) for name in names]
    if report.forgetting:
        panels.append(
            (
                "forgetting answer rate",
                {
                    "base": report.forgetting.base["answer_rate"],
                    "candidate": report.forgetting.candidate["answer_rate"],
                },
            )
        )
    panels = [(name, {v: x for v, x in values.items() if x is not None}) for name, values in panels]
    return [(name, values) for name, values in panels if values]


def metric_bars(report: EvalReport, path: Path) -> Path:
    """One panel per metric (its own scale), a bar per variant; plus the forgetting set's answer rate."""
    panels = metric_panels(report)
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 3.4), squeeze=False)
    for axis, (name, values) in zip(axes[0], panels):
        bars = axis.bar(list(values), list(values.values()), color=[COLORS.get(v, "#888") for v in values])
        axis.bar_label(bars, fmt="%.3g", fontsize=8)
        axis.set_title(name + (" (lower is better)" if name == "perplexity" else ""), fontsize=9)
        axis.tick_params(axis="x", labelsize=8)
    figure.suptitle(f"{report.candidate} vs base on {report.n} test records", fontsize=10)
    return _save(figure, path)


def confusion_matrices(report: EvalReport, path: Path) -> Path | None:
    """The classification confusion matrix of every variant, side by side."""
    matrices = {v: m["confusion"] for v, m in report.metrics.items() if "confusion" in m}
    if not matrices:
        return None
    plt = _pyplot()
    figure, axes = plt.subplots(1, len(matrices), figsize=(4.2 * len(matrices), 4), squeeze=False)
    for axis, (variant, matrix) in zip(axes[0], matrices.items()):
        axis.imshow(matrix["counts"], cmap="Greens")
        axis.set_xticks(
            range(len(matrix["predicted_labels"])), matrix["predicted_labels"], rotation=45, ha="right", fontsize=8
        )
        axis.set_yticks(range(len(matrix["labels"])), matrix["labels"], fontsize=8)
        for i, row in enumerate(matrix["counts"]):
            for j, count in enumerate(row):
                axis.text(j, i, count, ha="center", va="center", fontsize=7)
        axis.set_title(variant, fontsize=9)
        axis.set_xlabel("predicted", fontsize=8)
        axis.set_ylabel("reference", fontsize=8)
    return _save(figure, path)


def margin_histograms(margins: dict[str, list[float]], title: str, path: Path) -> Path | None:
    """Overlaid histograms of log p(chosen) − log p(rejected) per pair, one per model (same bins),
    with the line where the two replies are equally likely; None when there are no pairs."""
    if not any(margins.values()):
        return None
    import numpy as np

    plt = _pyplot()
    values = np.concatenate([np.asarray(m, dtype=float) for m in margins.values()])
    bins = np.histogram_bin_edges(values, bins=min(30, max(5, len(values) // 3)))
    figure, axis = plt.subplots(figsize=(6.4, 3.6))
    for label, series in margins.items():
        color = COLORS.get(label.split(" ")[0], "#7b1fa2")  # a compared version is headed "REF (role)"
        axis.hist(series, bins=bins, histtype="step", linewidth=1.8, color=color, label=f"{label} (n={len(series)})")
    axis.axvline(0, color="#444", linestyle="--", linewidth=1)
    axis.set(xlabel="log p(chosen) − log p(rejected)", ylabel="pairs", title=title)
    axis.legend(fontsize=8)
    return _save(figure, path)


def read_run_log(run_dir: str) -> list[dict]:
    """The training run's per-step log (`metrics.jsonl` in its run folder, local or object storage)."""
    uri = storage.join(run_dir, "metrics.jsonl")
    if storage.is_remote(uri):
        import pyarrow.fs

        filesystem, location = pyarrow.fs.FileSystem.from_uri(uri)
        try:
            with filesystem.open_input_stream(location) as stream:
                text = stream.read().decode()
        except FileNotFoundError:
            return []
    else:
        text = Path(uri).read_text() if Path(uri).exists() else ""
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def training_curve(run_dir: str | None, path: Path) -> Path | None:
    """Training (and validation) loss by step from the run log; None when there is no log."""
    log = [r for r in read_run_log(run_dir) if "loss" in r] if run_dir else []
    if not log:
        return None
    plt = _pyplot()
    figure, axis = plt.subplots(figsize=(6, 3.4))
    series = {
        "train loss": [(r["step"], r["loss"]) for r in log],
        "validation loss": [(r["step"], r["val_loss"]) for r in log if r.get("val_loss") is not None],
    }
    for label, points in series.items():
        if points:
            axis.plot(*zip(*points), label=label, marker="o" if label.startswith("val") else None)
    axis.set(xlabel="optimizer step", ylabel="loss", title=f"training run {Path(run_dir).name}")
    axis.legend()
    return _save(figure, path)


def drift_shares(feature: FeatureDrift, path: Path) -> Path:
    """One drift feature's shares per bin or category, training beside recent traffic."""
    plt = _pyplot()
    names = list(feature.training)
    figure, axis = plt.subplots(figsize=(7, 3.2))
    x = range(len(names))
    axis.bar([i - 0.2 for i in x], [feature.training[n] for n in names], 0.4, label="training", color="#9e9e9e")
    axis.bar([i + 0.2 for i in x], [feature.traffic.get(n, 0) for n in names], 0.4, label="traffic", color="#e65100")
    axis.set_xticks(list(x), names, rotation=45 if len(names) > 6 else 0, ha="right", fontsize=7)
    axis.set_ylabel("share")
    axis.set_title(f"{feature.feature}: PSI {feature.psi:.3f}{' (drift)' if feature.drifted else ''}")
    axis.legend()
    return _save(figure, path)
