"""Eval metrics against hand-computed cases: every task type, empty outputs, unseen labels."""

import math

import pytest

from rayft.eval.metrics import (
    NO_LABEL,
    accuracy,
    answer_rate,
    classification_metrics,
    confusion_matrix,
    contains_answer,
    extract_label,
    extraction_metrics,
    generation_metrics,
    json_label,
    macro_f1,
    parse_json,
    per_class,
    perplexity,
    structured_metrics,
)


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


def test_empty_and_mismatched_predictions():
    pattern = r"Category:\s*(\w+)"
    metrics = classification_metrics(["", None, ""], ["Category: a", "Category: b", "Category: a"], pattern)
    assert metrics["accuracy"] == 0.0 and metrics["macro_f1"] == 0.0 and metrics["unparsed"] == 3
    assert metrics["per_class"]["a"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 2}
    assert metrics["confusion"]["counts"] == [[0, 0, 2], [0, 0, 1]]  # all in the "(none)" column
    assert classification_metrics([], [], pattern)["accuracy"] == 0.0
    with pytest.raises(ValueError, match="2 outputs for 3 references"):
        accuracy(["a", "b"], ["a", "b", "c"])


def test_confusion_matrix_has_one_no_label_column_when_references_lack_a_label():
    pattern = r"Category:\s*(\w+)"
    outputs = ["Category: a", "no idea", "", "Category: b"]
    answers = ["Category: a", "I cannot tell", "Category: a", "nothing to extract"]  # two references without a label
    matrix = classification_metrics(outputs, answers, pattern)["confusion"]
    # rows (none), a; columns (none), a, then b (only predicted); (none) row: one unlabeled output, one "b";
    # a row: one "a", one empty output
    assert matrix["labels"] == [NO_LABEL, "a"] and matrix["predicted_labels"] == [NO_LABEL, "a", "b"]
    assert matrix["counts"] == [[1, 0, 1], [1, 1, 0]]


def test_confusion_matrix_keeps_unseen_labels_as_columns():
    predictions = ["a", "z", "b", None, "a"]  # "z" never appears in the references
    references = ["a", "a", "b", "b", "b"]
    matrix = confusion_matrix(predictions, references)
    assert matrix["labels"] == ["a", "b"] and matrix["predicted_labels"] == ["a", "b", "z", NO_LABEL]
    assert matrix["counts"] == [[1, 0, 1, 0], [1, 1, 0, 1]]
    # macro-F1 by hand: a: p=1/2 r=1/2 f1=1/2; b: p=1 r=1/3 f1=1/2 -> 0.5; "z" lowers a's recall, adds no class
    assert macro_f1(predictions, references) == pytest.approx(0.5)


def test_labels_from_a_json_field():
    answers = ['{"triage": {"category": "Billing"}}', '{"triage": {"category": "refund"}}']
    outputs = ['```json\n{"triage": {"category": "billing"}}\n```', 'Sure: {"triage": {"category": 3}}']
    metrics = classification_metrics(outputs, answers, json_path="triage.category")
    assert metrics["accuracy"] == 0.5 and metrics["confusion"]["predicted_labels"] == ["billing", "refund", "3"]
    assert json_label("not json", "a") is None and json_label('{"a": {"b": 1}}', "a") is None


def test_extraction_exact_match_per_field_and_overall():
    answers = ['{"name": "Ana Lima", "order": 123, "city": "Porto"}', '{"name": "Bo", "order": 7}']
    outputs = ['{"name": "ana  lima", "order": 123, "city": "Lisbon"}', '{"order": 7, "name": "Bo", "x": 1}']
    metrics = extraction_metrics(outputs, answers)
    assert metrics["fields"] == {"city": 0.0, "name": 1.0, "order": 1.0}
    assert metrics["exact_match"] == 0.5 and metrics["json_parse_rate"] == 1.0
    broken = extraction_metrics(["{oops", ""], answers, fields=["name"])
    assert broken == {"exact_match": 0.0, "fields": {"name": 0.0}, "json_parse_rate": 0.0}
    with pytest.raises(ValueError, match="reference answer 0 is not a JSON object"):
        extraction_metrics(["{}"], ["plain text"])


def test_generation_metrics_against_the_libraries_by_hand():
    answers = ["the cat sat on the mat", "hello world"]
    outputs = ["the cat sat on a mat", None]
    metrics = generation_metrics(outputs, answers)
    # ROUGE-L: LCS "the cat sat on mat" = 5 of 6 tokens each side -> F1 5/6; the missing output scores 0
    assert metrics["rouge_l"] == pytest.approx((5 / 6 + 0) / 2)
    assert generation_metrics(answers, answers)["bleu"] == pytest.approx(100.0)
    assert generation_metrics(answers, answers)["chrf"] == pytest.approx(100.0)
    assert 0 < metrics["bleu"] < 100 and 0 < metrics["chrf"] < 100
    assert generation_metrics([], []) == {"rouge_l": 0.0, "bleu": 0.0, "chrf": 0.0}


def test_structured_output_parse_and_schema_rates():
    schema = {"type": "object", "properties": {"priority": {"enum": ["low", "high"]}}, "required": ["priority"]}
    outputs = ['{"priority": "low"}', '{"priority": "urgent"}', "no json", None]
    assert structured_metrics(outputs, schema) == {"json_parse_rate": 0.5, "schema_valid_rate": 0.25}
    assert parse_json("null") == (True, None) and parse_json("") == (False, None)


def test_perplexity_is_token_weighted_and_skips_unscored_records():
    result = perplexity([2.0, None, 4.0], [2, 5, 2])  # mean NLL = 6 / 4 tokens
    assert result["nll"] == pytest.approx(1.5) and result["perplexity"] == pytest.approx(math.exp(1.5))
    assert (result["scored_tokens"], result["unscored"]) == (4, 1)
    assert perplexity([None], [3])["perplexity"] is None


def test_forgetting_answer_rate_matches_whole_words():
    assert contains_answer("Paris is the capital.", "paris") and not contains_answer("14 apples", "4")
    assert contains_answer("It says Category: billing", "Category:")
    assert answer_rate(["The answer is 40.", "I think 41", None], ["40", "40", "40"]) == pytest.approx(1 / 3)
