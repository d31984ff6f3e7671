"""How far one feature of recent traffic moved from the training data: a population stability index
(PSI) and a two-sample test, per feature.

- A numeric feature (prompt length in tokens) is binned at the training data's deciles; the PSI is
  over those bins, and the test is Kolmogorov–Smirnov (`scipy.stats.ks_2samp`).
- A categorical feature (which of the training prompts' most frequent tokens are used, the
  predicted label) is compared as shares per category; the test is chi-squared on the 2×k table of
  counts (`scipy.stats.chi2_contingency`).

PSI = Σ (traffic share − training share) · ln(traffic share ÷ training share), shares floored at
1e-4. Below 0.1 is usually read as stable, 0.1–0.2 as a moderate shift, above 0.2 as a major one. A
feature *drifts* when its PSI reaches the threshold and its test's p-value is below the limit: the
PSI says the shift is large, the test that it is not noise of a small sample.
"""

from __future__ import annotations

from collections import Counter

import numpy as np
from pydantic import BaseModel

FLOOR = 1e-4


class FeatureDrift(BaseModel):
    feature: str
    psi: float
    p_value: float
    test: str
    drifted: bool
    training: dict[str, float]  # shares per bin or category
    traffic: dict[str, float]


def psi(expected: np.ndarray, actual: np.ndarray) -> float:
    """The population stability index between two share vectors over the same bins."""
    e, a = np.maximum(expected, FLOOR), np.maximum(actual, FLOOR)
    return float(np.sum((a - e) * np.log(a / e)))


def shares(counts: np.ndarray) -> np.ndarray:
    total = counts.sum()
    return counts / total if total else counts.astype(float)


def numeric_drift(
    name: str, training: list[float], traffic: list[float], threshold: float, alpha: float
) -> FeatureDrift:
    """PSI over the training deciles, and the Kolmogorov–Smirnov test."""
    from scipy.stats import ks_2samp

    train, recent = np.asarray(training, dtype=float), np.asarray(traffic, dtype=float)
    inner = np.unique(np.quantile(train, np.linspace(0.1, 0.9, 9)))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    expected = shares(np.histogram(train, edges)[0])
    actual = shares(np.histogram(recent, edges)[0])
    labels = [f"<{inner[0]:g}"] + [f"{lo:g}–{hi:g}" for lo, hi in zip(inner[:-1], inner[1:])] + [f"≥{inner[-1]:g}"]
    score, p_value = psi(expected, actual), float(ks_2samp(train, recent).pvalue)
    return FeatureDrift(
        feature=name,
        psi=score,
        p_value=p_value,
        test="ks_2samp",
        drifted=score >= threshold and p_value < alpha,
        training=dict(zip(labels, expected.round(6).tolist())),
        traffic=dict(zip(labels, actual.round(6).tolist())),
    )


def categorical_drift(
    name: str, training: Counter, traffic: Counter, threshold: float, alpha: float, keep: int | None = None
) -> FeatureDrift:
    """PSI over the categories (the `keep` most frequent in training, the rest pooled as `other`), and chi-squared."""
    from scipy.stats import chi2_contingency

    kept = [c for c, _ in training.most_common(keep)]
    rest = lambda counts: sum(v for c, v in counts.items() if c not in kept)  # noqa: E731
    categories = kept + ["other"]
    train = np.array([training[c] for c in kept] + [rest(training)], dtype=float)
    recent = np.array([traffic[c] for c in kept] + [rest(traffic)], dtype=float)
    used = (train + recent) > 0
    table = np.vstack([train[used], recent[used]])
    p_value = float(chi2_contingency(table).pvalue) if table.shape[1] > 1 else 1.0
    expected, actual = shares(train), shares(recent)
    score = psi(expected[used], actual[used])
    return FeatureDrift(
        feature=name,
        psi=score,
        p_value=p_value,
        test="chi2_contingency",
        drifted=score >= threshold and p_value < alpha,
        training={str(c): round(float(s), 6) for c, s, u in zip(categories, expected, used) if u},
        traffic={str(c): round(float(s), 6) for c, s, u in zip(categories, actual, used) if u},
    )
