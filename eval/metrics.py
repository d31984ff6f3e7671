"""Metrics on predictions against references. Pure functions; no model, no Ray."""

from __future__ import annotations

import re


def extract_label(text: str | None, pattern: str) -> str | None:
    """The first capture group of `pattern` in `text`, lower-cased and stripped; None if absent."""
    if not text:
        return None
    match = re.search(pattern, text)
    return match.group(1).strip().lower() if match else None


def accuracy(predictions: list[str | None], references: list[str]) -> float:
    """Share of predictions equal to their reference (a missing prediction is wrong)."""
    if not references:
        return 0.0
    return sum(p == r for p, r in zip(predictions, references)) / len(references)


def per_class(predictions: list[str | None], references: list[str]) -> dict[str, dict]:
    """Precision, recall, F1 and support for every reference class."""
    out = {}
    for label in sorted(set(references)):
        tp = sum(p == label and r == label for p, r in zip(predictions, references))
        predicted = sum(p == label for p in predictions)
        support = sum(r == label for r in references)
        precision = tp / predicted if predicted else 0.0
        recall = tp / support if support else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        out[label] = {"precision": precision, "recall": recall, "f1": f1, "support": support}
    return out


def macro_f1(predictions: list[str | None], references: list[str]) -> float:
    """Unweighted mean F1 over the reference classes (predicted-only labels count as errors)."""
    classes = per_class(predictions, references)
    return sum(c["f1"] for c in classes.values()) / len(classes) if classes else 0.0


def classification_metrics(outputs: list[str | None], answers: list[str], pattern: str) -> dict:
    """Accuracy, macro-F1 and per-class scores of generated outputs against reference answers."""
    references = [extract_label(a, pattern) or "" for a in answers]
    predictions = [extract_label(o, pattern) for o in outputs]
    return {
        "accuracy": accuracy(predictions, references),
        "macro_f1": macro_f1(predictions, references),
        "per_class": per_class(predictions, references),
        "unparsed": sum(p is None for p in predictions),
    }
