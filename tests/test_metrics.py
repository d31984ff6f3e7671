"""Classification metrics against hand-computed cases."""

import pytest

from rayft.eval.metrics import accuracy, classification_metrics, extract_label, macro_f1, per_class


def test_extract_label():
    assert extract_label("Category: Billing\nPriority: high", r"Category:\s*(\w+)") == "billing"
    assert extract_label("no label here", r"Category:\s*(\w+)") is None
    assert extract_label("", r"Category:\s*(\w+)") is None


def test_accuracy_counts_missing_predictions_as_wrong():
    assert accuracy(["a", None, "b", "b"], ["a", "a", "b", "a"]) == 0.5
    assert accuracy([], []) == 0.0


def test_macro_f1_by_hand():
    predictions = ["a", "a", "b", None, "c"]  # "c" is a label the references never use
    references = ["a", "b", "b", "b", "a"]
    classes = per_class(predictions, references)
    # a: tp=1, predicted=2, support=2 -> p=.5 r=.5 f1=.5 ; b: tp=1, predicted=1, support=3 -> p=1 r=1/3 f1=.5
    assert classes["a"]["f1"] == pytest.approx(0.5)
    assert classes["b"]["precision"] == 1.0 and classes["b"]["recall"] == pytest.approx(1 / 3)
    assert classes["b"]["f1"] == pytest.approx(0.5)
    assert "c" not in classes
    assert macro_f1(predictions, references) == pytest.approx(0.5)


def test_classification_metrics_on_generated_text():
    outputs = ["Category: billing\n...", "garbage", "Category: refund"]
    answers = ["Category: billing\nPriority: low", "Category: refund", "Category: refund"]
    metrics = classification_metrics(outputs, answers, r"Category:\s*(\w+)")
    assert metrics["accuracy"] == pytest.approx(2 / 3)
    assert metrics["unparsed"] == 1
