"""`rayft review report NAME:VERSION`: what reviewers said of a version, with its uncertainty.

Only ratings of the version's registered weights count (each rating records the hash it judged).

- **Win rate** per opponent: wins ÷ (wins + losses), ties and "both bad" left out (they are counted
  beside it), with a 95% Wilson score interval (`scipy.stats.binomtest`).
- **Single answers** (1–5): the mean score and how many.
- **Agreement** between reviewers on the items more than one of them judged: Krippendorff's alpha
  (the `krippendorff` library), nominal for pairwise verdicts and ordinal for scores. 1 is perfect
  agreement, 0 what chance gives; it needs at least two such items.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from pydantic import BaseModel

from rayft import storage
from rayft.feedback import VERDICTS, FeedbackStore, Rating
from rayft.registry import ModelVersion, Registry


class Pairwise(BaseModel):
    """The candidate's pairwise record against one other version."""

    other: str
    wins: int
    losses: int
    ties: int
    both_bad: int
    win_rate: float | None
    low: float | None
    high: float | None

    @property
    def judgments(self) -> int:
        """Judgments that said something about which answer is better (both-bad ones did not)."""
        return self.wins + self.losses + self.ties


class Agreement(BaseModel):
    alpha: float | None
    items: int
    level: str


class ReviewSummary(BaseModel):
    """Everything `rayft review report` says of one version."""

    ref: str
    weights_hash: str | None
    pairwise: list[Pairwise]
    scores: dict[str, float | int | None]
    reviewers: dict[str, int]
    agreement: dict[str, Agreement]
    comments: list[str]

    def against(self, other: str) -> Pairwise | None:
        return next((p for p in self.pairwise if p.other == other), None)


def wilson(wins: int, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The Wilson score interval of wins out of n."""
    if n == 0:
        return None, None
    from scipy.stats import binomtest

    interval = binomtest(wins, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(interval.low), float(interval.high)


def pairwise(ratings: list[Rating]) -> list[Pairwise]:
    by_other: dict[str, Counter] = defaultdict(Counter)
    for rating in ratings:
        by_other[rating.other][rating.verdict] += 1
    found = []
    for other, counts in sorted(by_other.items()):
        wins, losses = counts["candidate"], counts["other"]
        low, high = wilson(wins, wins + losses)
        found.append(
            Pairwise(
                other=other,
                wins=wins,
                losses=losses,
                ties=counts["tie"],
                both_bad=counts["both_bad"],
                win_rate=wins / (wins + losses) if wins + losses else None,
                low=low,
                high=high,
            )
        )
    return found


def agreement(ratings: list[Rating], value, level: str) -> Agreement:
    """Krippendorff's alpha over the items at least two reviewers rated (`value(rating)` is what is compared)."""
    by_item: dict[int, dict[str, float]] = defaultdict(dict)
    for rating in ratings:
        by_item[rating.item][rating.reviewer] = value(rating)
    shared = {item: given for item, given in by_item.items() if len(given) > 1}
    reviewers = sorted({r for given in shared.values() for r in given})
    if len(shared) < 2:
        return Agreement(alpha=None, items=len(shared), level=level)
    import krippendorff
    import numpy as np

    data = np.array([[shared[item].get(r, np.nan) for item in sorted(shared)] for r in reviewers], dtype=float)
    if len(np.unique(data[~np.isnan(data)])) < 2:  # everyone said the same thing everywhere: perfect agreement
        return Agreement(alpha=1.0, items=len(shared), level=level)
    return Agreement(
        alpha=float(krippendorff.alpha(reliability_data=data, level_of_measurement=level)),
        items=len(shared),
        level=level,
    )


def summarize(store: FeedbackStore, version: ModelVersion) -> ReviewSummary:
    """The review summary of `version` from every rating of its registered weights."""
    ratings = [r for r in store.ratings(version.ref) if r.candidate_hash == version.weights_hash]
    pairs = [r for r in ratings if r.verdict is not None]
    singles = [r for r in ratings if r.score is not None]
    agreements = {}
    if pairs:
        agreements["pairwise"] = agreement(pairs, lambda r: VERDICTS.index(r.verdict), "nominal")
    if singles:
        agreements["scores"] = agreement(singles, lambda r: r.score, "ordinal")
    return ReviewSummary(
        ref=version.ref,
        weights_hash=version.weights_hash,
        pairwise=pairwise(pairs),
        scores={
            "n": len(singles),
            "mean": sum(r.score for r in singles) / len(singles) if singles else None,
        },
        reviewers=dict(sorted(Counter(r.reviewer for r in ratings).items())),
        agreement=agreements,
        comments=[f"{r.reviewer}: {r.comment}" for r in ratings if r.comment],
    )


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def markdown(summary: ReviewSummary) -> str:
    """The summary as the "Human review" section of report.md and `rayft review report`."""
    lines = [f"## Human review of {summary.ref}", ""]
    if summary.pairwise:
        lines += [
            "| against | wins | losses | ties | both bad | win rate | 95% interval |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in summary.pairwise:
            interval = "-" if p.low is None else f"{p.low:.3f} – {p.high:.3f}"
            lines.append(
                f"| {p.other} | {p.wins} | {p.losses} | {p.ties} | {p.both_bad} | {_rate(p.win_rate)} | {interval} |"
            )
        lines.append("")
    if summary.scores["n"]:
        lines += [f"Single answers: mean score {summary.scores['mean']:.2f} of 5 over {summary.scores['n']}.", ""]
    for kind, agreed in summary.agreement.items():
        lines.append(
            f"Agreement ({kind}, Krippendorff's alpha, {agreed.level}): {_rate(agreed.alpha)} on {agreed.items} "
            "items seen by more than one reviewer."
        )
    lines += ["", "Reviewers: " + (", ".join(f"{k} ({v})" for k, v in summary.reviewers.items()) or "none"), ""]
    if summary.comments:
        lines += ["Comments:", *[f"- {c}" for c in summary.comments], ""]
    return "\n".join(lines)


def headline(summary: ReviewSummary) -> str | None:
    """One line for `rayft registry show`."""
    parts = [f"win rate {_rate(p.win_rate)} over {p.other} ({p.wins}-{p.losses}-{p.ties})" for p in summary.pairwise]
    if summary.scores["n"]:
        parts.append(f"mean score {summary.scores['mean']:.2f} of 5 ({summary.scores['n']})")
    alpha = [f"alpha {a.alpha:.2f}" for a in summary.agreement.values() if a.alpha is not None]
    return "; ".join(parts + alpha) or None


def publish(registry: Registry, version: ModelVersion, summary: ReviewSummary) -> str | None:
    """Attach the summary to the version's eval report in the registry (when that report is about
    these weights) and write review.md and review.json beside it; returns the markdown's path."""
    record = version.eval_report
    if not record or record.get("weights_hash") != version.weights_hash or not record.get("folder"):
        return None
    registry.set_eval_report(version.ref, record | {"human_review": summary.model_dump(mode="json")})
    with storage.writable_dir(record["folder"]) as out:
        (out / "review.md").write_text(markdown(summary))
        (out / "review.json").write_text(summary.model_dump_json(indent=2) + "\n")
    return storage.join(record["folder"], "review.md")


def print_summary(summary: ReviewSummary, written: str | None) -> None:
    from rich.console import Console
    from rich.markdown import Markdown

    Console().print(Markdown(markdown(summary)))
    if written:
        print(f"written to {written} and attached to {summary.ref}'s eval report")
