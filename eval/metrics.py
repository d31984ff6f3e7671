"""Metrics on generated outputs against references. Pure functions; no model, no Ray.

One function per task type (`classification_metrics`, `extraction_metrics`, `generation_metrics`,
`structured_metrics`), `perplexity` from teacher-forced log-likelihoods, `preference_metrics` on
preference pairs from the log-likelihoods of both replies, and `answer_rate` for the forgetting set.
`task_metrics` picks the right one from the eval config. A missing output (None or empty) is always
scored as wrong, never skipped.
"""

from __future__ import annotations

import json
import math
import re

from rayft.config import EvalConfig
from rayft.tool_calls import ReadCalls

SCORED_TASKS = ("perplexity", "preference")  # measured from likelihoods alone: nothing is generated
NO_LABEL = "(none)"  # the confusion-matrix column for outputs with no label in them


def _check_lengths(outputs: list, references: list) -> None:
    if len(outputs) != len(references):
        raise ValueError(f"{len(outputs)} outputs for {len(references)} references")


# classification


def extract_label(text: str | None, pattern: str) -> str | None:
    """The first capture group of `pattern` in `text`, lower-cased and stripped; None if absent."""
    if not text:
        return None
    match = re.search(pattern, text)
    return match.group(1).strip().lower() if match else None


def json_label(text: str | None, path: str) -> str | None:
    """The value at dotted `path` in `text` parsed as JSON, as a lower-cased string; None if absent."""
    ok, value = parse_json(text)
    for key in path.split("."):
        if not ok or not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return None if value is None or isinstance(value, (dict, list)) else str(value).strip().lower()


def accuracy(predictions: list[str | None], references: list[str]) -> float:
    """Share of predictions equal to their reference (a missing prediction is wrong)."""
    _check_lengths(predictions, references)
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


def confusion_matrix(predictions: list[str | None], references: list[str]) -> dict:
    """Counts by (reference, prediction). Rows: reference classes; columns: those plus labels only
    ever predicted (unseen labels), plus NO_LABEL for outputs without one (a single column, also when
    references without a label make NO_LABEL a row)."""
    rows = sorted(set(references))
    unseen = sorted({p for p in predictions if p is not None} - set(rows))
    columns = list(dict.fromkeys(rows + unseen + ([NO_LABEL] if None in predictions else [])))
    counts = [[0] * len(columns) for _ in rows]
    for p, r in zip(predictions, references):
        counts[rows.index(r)][columns.index(NO_LABEL if p is None else p)] += 1
    return {"labels": rows, "predicted_labels": columns, "counts": counts}


def classification_metrics(
    outputs: list[str | None], answers: list[str], pattern: str | None = None, json_path: str | None = None
) -> dict:
    """Accuracy, macro-F1, per-class precision/recall and the confusion matrix of generated outputs,
    with labels taken by regex `pattern` or from the JSON field at `json_path`."""
    _check_lengths(outputs, answers)

    def label(text):
        return json_label(text, json_path) if json_path else extract_label(text, pattern)

    references = [label(a) or NO_LABEL for a in answers]
    predictions = [label(o) for o in outputs]
    return {
        "accuracy": accuracy(predictions, references),
        "macro_f1": macro_f1(predictions, references),
        "per_class": per_class(predictions, references),
        "confusion": confusion_matrix(predictions, references),
        "unparsed": sum(p is None for p in predictions),
    }


# extraction and structured output


def parse_json(text: str | None) -> tuple[bool, object]:
    """(True, value) when `text` holds JSON: the whole text, a ```json fence, or its outermost {...}."""
    if not text:
        return False, None
    candidates = [text.strip()]
    fence = re.search(r"```(?:json)?\s*(.*?)```", text, re.DOTALL)
    if fence:
        candidates.append(fence.group(1).strip())
    if "{" in text and "}" in text:
        candidates.append(text[text.index("{") : text.rindex("}") + 1])
    for candidate in candidates:
        try:
            return True, json.loads(candidate)
        except json.JSONDecodeError:
            continue
    return False, None


def _normalized(value) -> str:
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    return json.dumps(value, sort_keys=True)


def extraction_metrics(outputs: list[str | None], answers: list[str], fields: list[str] | None = None) -> dict:
    """Exact match per field and overall (every field right) of JSON outputs against JSON answers.
    Strings compare case- and whitespace-insensitively; an unparseable output gets every field wrong."""
    _check_lengths(outputs, answers)
    references = []
    for i, answer in enumerate(answers):
        ok, value = parse_json(answer)
        if not ok or not isinstance(value, dict):
            raise ValueError(f"reference answer {i} is not a JSON object: {answer[:80]!r}")
        references.append(value)
    predictions = [parse_json(o) for o in outputs]
    names = fields or sorted({k for r in references for k in r})
    hits = {name: [] for name in names}
    overall = []
    for (ok, predicted), reference in zip(predictions, references):
        predicted = predicted if ok and isinstance(predicted, dict) else {}
        matched = [
            name in predicted and _normalized(predicted[name]) == _normalized(reference[name])
            for name in names
            if name in reference
        ]
        for name, match in zip([n for n in names if n in reference], matched):
            hits[name].append(match)
        overall.append(all(matched))
    return {
        "exact_match": sum(overall) / len(overall) if overall else 0.0,
        "fields": {name: sum(h) / len(h) if h else 0.0 for name, h in hits.items()},
        "json_parse_rate": sum(ok for ok, _ in predictions) / len(predictions) if predictions else 0.0,
    }


def structured_metrics(outputs: list[str | None], schema: dict) -> dict:
    """Share of outputs that parse as JSON, and share that also validate against `schema`."""
    import jsonschema

    validator = jsonschema.validators.validator_for(schema)(schema)
    parsed = [parse_json(o) for o in outputs]
    valid = [ok and validator.is_valid(value) for ok, value in parsed]
    n = len(outputs)
    return {
        "json_parse_rate": sum(ok for ok, _ in parsed) / n if n else 0.0,
        "schema_valid_rate": sum(valid) / n if n else 0.0,
    }


# generation


def generation_metrics(outputs: list[str | None], answers: list[str]) -> dict:
    """Mean ROUGE-L F1 (rouge-score), corpus BLEU and chrF (sacrebleu, 0-100)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    _check_lengths(outputs, answers)
    if not answers:
        return {"rouge_l": 0.0, "bleu": 0.0, "chrf": 0.0}
    hypotheses = [o or "" for o in outputs]
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(a, h)["rougeL"].fmeasure for a, h in zip(answers, hypotheses)]
    return {
        "rouge_l": sum(rouge) / len(rouge),
        "bleu": sacrebleu.corpus_bleu(hypotheses, [answers]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [answers]).score,
    }


# perplexity and forgetting


def perplexity(nll_sums: list[float | None], token_counts: list[int | None]) -> dict:
    """Token-weighted perplexity from per-record summed negative log-likelihoods (records that could
    not be scored, e.g. too long for the context, are None and counted as `unscored`)."""
    pairs = [(s, n) for s, n in zip(nll_sums, token_counts) if s is not None and n]
    tokens = sum(n for _, n in pairs)
    if not tokens:
        return {"perplexity": None, "nll": None, "scored_tokens": 0, "unscored": len(nll_sums)}
    nll = sum(s for s, _ in pairs) / tokens
    return {"perplexity": math.exp(nll), "nll": nll, "scored_tokens": tokens, "unscored": len(nll_sums) - len(pairs)}


# preference pairs


def pair_margins(chosen_nll: list[float | None], rejected_nll: list[float | None]) -> list[float | None]:
    """Per pair, log p(chosen) − log p(rejected) after the prompt (each the sum over the reply's
    tokens, so rejected NLL − chosen NLL); None where either reply could not be scored."""
    _check_lengths(chosen_nll, rejected_nll)
    return [None if c is None or r is None else r - c for c, r in zip(chosen_nll, rejected_nll)]


def preference_metrics(margins: list[float | None], base_margins: list[float | None]) -> dict:
    """A model's pair margins (`pair_margins`) against the base's on the same pairs:
    `preference_accuracy`, the share of pairs where the chosen reply is the more likely (a pair that
    could not be scored counts as wrong); `reward_margin`, the mean over pairs scored for both of
    margin − base margin, i.e. DPO's implicit reward margin with the base as the reference and
    β = 1 (the base's own is 0); `mean_margin`, the mean margin itself; and the pair counts."""
    _check_lengths(margins, base_margins)
    scored = [m for m in margins if m is not None]
    both = [(m, b) for m, b in zip(margins, base_margins) if m is not None and b is not None]
    return {
        "preference_accuracy": sum(m > 0 for m in scored) / len(margins) if margins else 0.0,
        "reward_margin": sum(m - b for m, b in both) / len(both) if both else None,
        "mean_margin": sum(scored) / len(scored) if scored else None,
        "scored_pairs": len(scored),
        "unscored_pairs": len(margins) - len(scored),
    }


def contains_answer(output: str | None, expected: str) -> bool:
    """`expected` appears in `output` as a whole word or phrase, ignoring case."""
    return bool(output) and re.search(rf"(?<!\w){re.escape(expected)}(?!\w)", output, re.IGNORECASE) is not None


def answer_rate(outputs: list[str | None], expected: list[str]) -> float:
    """Share of outputs that contain their expected answer (the forgetting set's score)."""
    _check_lengths(outputs, expected)
    return sum(contains_answer(o, e) for o, e in zip(outputs, expected)) / len(expected) if expected else 0.0


def tool_call_metrics(outputs: list[str | None], answers: list[str]) -> dict:
    """Over the rows that ask for a call (the answer is `[{"name", "arguments"}]`; each output the
    calls read back, `rayft.tool_calls.ReadCalls`): the share that picked the expected tool first
    (a call whose JSON does not parse still says which tool it meant), whose arguments equal the
    expected ones as parsed JSON, whose calls parse with object arguments (of those that tried to
    call), and that answered with text, trying no call, where a call was due."""
    _check_lengths(outputs, answers)
    rows = [(ReadCalls.from_json(o), json.loads(a)) for o, a in zip(outputs, answers) if a and a.startswith("[")]
    if not rows:
        return {name: 0.0 for name in ("tool_name_accuracy", "arguments_exact_match", "arguments_json_valid")} | {
            "text_instead_of_call": 0.0
        }
    named = [read.chosen_tool == want[0]["name"] for read, want in rows]
    exact = [
        ok and bool(read.calls) and _arguments(read.calls[0]["arguments"]) == _arguments(want[0]["arguments"])
        for ok, (read, want) in zip(named, rows)
    ]
    tried = [read for read, _ in rows if read.attempted]
    valid = [
        bool(read.calls) and all(isinstance(_arguments(c["arguments"]), dict) for c in read.calls) for read in tried
    ]
    return {
        "tool_name_accuracy": sum(named) / len(rows),
        "arguments_exact_match": sum(exact) / len(rows),
        "arguments_json_valid": sum(map(bool, valid)) / len(tried) if tried else 0.0,
        "text_instead_of_call": sum(not read.attempted for read, _ in rows) / len(rows),
    }


def _arguments(text: str):
    """A call's arguments as parsed JSON (None when they are not JSON)."""
    try:
        return json.loads(text) if isinstance(text, str) else text
    except json.JSONDecodeError:
        return None


def task_metrics(config: EvalConfig, outputs: list[str | None], answers: list[str]) -> dict:
    """The metrics of `config.task` (perplexity is scored separately, from log-likelihoods)."""
    if config.task == "classification":
        return classification_metrics(outputs, answers, config.label_regex, config.label_json)
    if config.task == "extraction":
        return extraction_metrics(outputs, answers, config.fields)
    if config.task == "generation":
        return generation_metrics(outputs, answers)
    if config.task == "structured":
        return structured_metrics(outputs, config.json_schema)
    if config.task == "tool_call":
        return tool_call_metrics(outputs, answers)
    return {}
