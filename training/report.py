"""A finished run for people: the per-step log summarised, and a loss-curve PNG."""

from __future__ import annotations

import json
from pathlib import Path


def read_log(path: str | Path) -> list[dict]:
    """The run's log: one record per optimizer step, plus events such as `{"event": "resumed"}`."""
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def steps(log: list[dict]) -> list[dict]:
    """Only the per-step records of a log."""
    return [r for r in log if "loss" in r]


def summarize(log: list[dict]) -> dict:
    """First and last training loss, best validation loss, steps and mean throughput."""
    events = [r for r in log if "event" in r]
    log = steps(log)
    if not log:
        return {}
    val = [r["val_loss"] for r in log if r.get("val_loss") is not None]
    speeds = [r["tokens_per_s"] for r in log if r.get("tokens_per_s")]
    return {
        "steps": log[-1]["step"],
        "first_loss": log[0]["loss"],
        "final_loss": log[-1]["loss"],
        "best_val_loss": min(val) if val else None,
        "final_val_loss": val[-1] if val else None,
        "tokens_per_s": sum(speeds) / len(speeds) if speeds else None,
        "restarts": sum(1 for e in events if e["event"] == "resumed"),
    }


def plot_loss_curve(log: list[dict], path: str | Path) -> Path | None:
    """Training and validation loss by step, as a PNG."""
    log = steps(log)
    if not log:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    axis.plot([r["step"] for r in log], [r["loss"] for r in log], label="train loss")
    val = [(r["step"], r["val_loss"]) for r in log if r.get("val_loss") is not None]
    if val:
        axis.plot(*zip(*val), marker="o", label="validation loss")
    axis.set_xlabel("optimizer step")
    axis.set_ylabel("loss")
    axis.legend()
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return Path(path)
