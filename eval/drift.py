"""`rayft drift NAME:ALIAS`: has production traffic moved away from what the version was trained on?

setup   the versions the alias serves (each target of a traffic split), for each its training split
        (from the config it was trained with), its base's tokenizer, and its sampled traffic of the
        last `drift.window_days` (`serve.traffic`; only records of its registered weights)
run     per feature, a population stability index and a two-sample test (`drift_features.py`):
        prompt length in tokens, the mix of the training prompts' most frequent tokens, and, for a
        classification task, the predicted-label distribution against the training labels; and what
        reviewers said of the version's answers to traffic (`rayft review prepare --source traffic`)
report  drift.json, drift.md, drift.html and plots per version in `drift.report_path`
        (default $RAYFT_HOME/drift/NAME/VERSION); the scores go to the registry database, and every
        serving replica exports them on /metrics (`rayft_drift_score`, `rayft_drift_detected`)
"""

from __future__ import annotations

import html
import json
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

from pydantic import BaseModel

from rayft import storage
from rayft.config import RayftConfig, parse_config
from rayft.eval import plots
from rayft.eval.drift_features import FeatureDrift, categorical_drift, numeric_drift
from rayft.eval.metrics import extract_label, json_label
from rayft.eval.review_items import traffic_records
from rayft.eval.review_report import summarize
from rayft.feedback import FeedbackStore
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry, resolve_model_path

TRAINING_SAMPLE = 5000  # training prompts compared at most (the first ones of the split)


class VersionDrift(BaseModel):
    ref: str
    weights_hash: str | None
    training_records: int
    traffic_records: int
    enough: bool
    features: list[FeatureDrift]
    score: float | None
    drifted: bool
    human: dict
    folder: str | None = None


def prompt_text(messages: list[dict]) -> str:
    """Every turn before the final answer, as one text."""
    turns = messages[:-1] if messages and messages[-1]["role"] == "assistant" else messages
    return "\n".join(t["content"] or "" for t in turns)


def training_rows(config: RayftConfig) -> list[dict]:
    """The version's training split: messages and label, at most TRAINING_SAMPLE rows."""
    path = storage.join(config.dataset_dir(), "train.parquet")
    if not storage.exists(path):
        raise FileNotFoundError(f"{path}: the version's training split is not there any more")
    table = storage.parquet_file(path).read(columns=["messages", "label"])
    return table.slice(0, TRAINING_SAMPLE).to_pylist()


def recent_traffic(traffic_root: Path, version: ModelVersion, window_days: float, now: float) -> list[dict]:
    """The version's sampled records of the last `window_days`, of its registered weights only."""
    since = datetime.fromtimestamp(now - window_days * 86400, timezone.utc).isoformat(timespec="seconds")
    folder = traffic_root / version.name / str(version.version)
    return [
        r
        for r in traffic_records(folder)
        if r.get("weights_hash") == version.weights_hash and r.get("sampled_at", "") >= since
    ]


def labeller(config: RayftConfig):
    """The predicted label of an answer, when the version's task is classification; else None."""
    if config.eval.task != "classification":
        return None
    if config.eval.label_json:
        return lambda text: json_label(text, config.eval.label_json)
    return lambda text: extract_label(text, config.eval.label_regex)


def compare(
    version: ModelVersion, config: RayftConfig, train: list[dict], traffic: list[dict], settings
) -> list[FeatureDrift]:
    """Every feature's drift between the version's training rows and `traffic`."""
    from transformers import AutoTokenizer

    base, _ = resolve_model_path(version.base_model, Registry())
    tokenizer = AutoTokenizer.from_pretrained(base)

    def tokens(rows: list[list[dict]]) -> list[list[int]]:
        return tokenizer([prompt_text(m) for m in rows], add_special_tokens=False)["input_ids"]

    train_ids, traffic_ids = tokens([r["messages"] for r in train]), tokens([r["messages"] for r in traffic])
    threshold, alpha = settings.psi_threshold, settings.p_value
    features = [
        numeric_drift("prompt_tokens", [len(i) for i in train_ids], [len(i) for i in traffic_ids], threshold, alpha),
        categorical_drift(
            "prompt_token_mix",
            Counter(t for ids in train_ids for t in tokenizer.convert_ids_to_tokens(ids)),
            Counter(t for ids in traffic_ids for t in tokenizer.convert_ids_to_tokens(ids)),
            threshold,
            alpha,
            keep=settings.top_tokens,
        ),
    ]
    label = labeller(config)
    if label:
        trained = Counter(str(r["label"]).strip().lower() for r in train if r.get("label") not in (None, "__all__"))
        predicted = Counter(label(r["messages"][-1]["content"]) or "(none)" for r in traffic)
        features.append(categorical_drift("predicted_label", trained, predicted, threshold, alpha))
    return features


def human_view(store: FeedbackStore, version: ModelVersion) -> dict:
    """What reviewers said of the version's answers to traffic, beside its test-split record."""
    summary = summarize(store, version)
    traffic = [
        r.score for r in store.ratings(version.ref, source="traffic") if r.candidate_hash == version.weights_hash
    ]
    return {
        "traffic_rated": len(traffic),
        "traffic_mean_score": sum(traffic) / len(traffic) if traffic else None,
        "traffic_good_share": sum(s >= 4 for s in traffic) / len(traffic) if traffic else None,
        "test_pairwise": [p.model_dump() for p in summary.pairwise],
    }


def markdown(result: VersionDrift, settings) -> str:
    verdict = "not enough traffic to tell" if not result.enough else ("DRIFT" if result.drifted else "no drift")
    lines = [
        f"# Drift of {result.ref}: {verdict}",
        "",
        f"{result.traffic_records} traffic records of the last {settings.window_days:g} days against "
        f"{result.training_records} training records. A feature drifts when its PSI ≥ {settings.psi_threshold:g} "
        f"and its test's p < {settings.p_value:g}.",
        "",
        "| feature | PSI | test | p-value | drifted |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {f.feature} | {f.psi:.3f} | {f.test} | {f.p_value:.3g} | {'yes' if f.drifted else 'no'} |"
        for f in result.features
    ]
    human = result.human
    if human["traffic_rated"]:
        lines += [
            "",
            f"Reviewed traffic: {human['traffic_rated']} answers, mean score {human['traffic_mean_score']:.2f} of 5, "
            f"{human['traffic_good_share']:.0%} rated 4 or 5.",
        ]
    lines += ["", *[f"![{f.feature}]({f.feature}.png)" for f in result.features]]
    return "\n".join(lines) + "\n"


def page(result: VersionDrift, text: str) -> str:
    """drift.html: the same report for a browser, plots inline."""
    rows = "".join(
        f"<tr class={'drift' if f.drifted else 'ok'}><td>{html.escape(f.feature)}</td><td>{f.psi:.3f}</td>"
        f"<td>{f.test}</td><td>{f.p_value:.3g}</td><td>{'yes' if f.drifted else 'no'}</td></tr>"
        for f in result.features
    )
    plots_html = "".join(f'<img src="{f.feature}.png" alt="{f.feature}">' for f in result.features)
    title = html.escape(text.splitlines()[0].lstrip("# "))
    return (
        "<!doctype html><meta charset=utf-8><title>rayft drift</title><style>body{font:15px system-ui;margin:24px}"
        "table{border-collapse:collapse}td,th{border:1px solid #ccd;padding:4px 10px}.drift{background:#fde0dc}"
        f"img{{max-width:48%;margin:8px}}</style><h1>{title}</h1><p>{html.escape(text.splitlines()[2])}</p>"
        f"<table><tr><th>feature<th>PSI<th>test<th>p-value<th>drifted</tr>{rows}</table>{plots_html}"
    )


def write_report(result: VersionDrift, settings, root: str) -> VersionDrift:
    target = storage.join(root, *result.ref.split(":"))
    with storage.writable_dir(target) as out:
        for feature in result.features:
            plots.drift_shares(feature, out / f"{feature.feature}.png")
        text = markdown(result, settings)
        (out / "drift.md").write_text(text)
        (out / "drift.html").write_text(page(result, text))
        result = result.model_copy(update={"folder": target})
        (out / "drift.json").write_text(json.dumps(result.model_dump(mode="json"), indent=2) + "\n")
    return result


def check_drift(ref: str, config: RayftConfig | None = None, now: float | None = None) -> list[VersionDrift]:
    """Drift of every version `ref` (NAME:ALIAS, or one version) serves; scores recorded for /metrics."""
    # setup
    registry, now = Registry(), time.time() if now is None else now
    targets = registry.alias_targets(ref) or [(registry.get(ref), 1.0)]
    traffic = config.serve.traffic if config else None
    traffic_root = Path(traffic.path) if traffic and traffic.path else rayft_home() / "traffic"
    store = FeedbackStore(registry.path)
    results = []
    for version, _ in targets:
        trained_with = parse_config(version.config, f"{version.ref}'s config")
        settings = (config or trained_with).drift
        train = training_rows(trained_with)
        recent = recent_traffic(traffic_root, version, settings.window_days, now)
        enough = len(recent) >= settings.min_records

        # run
        features = compare(version, trained_with, train, recent, settings) if enough else []
        score = max((f.psi for f in features), default=None)
        result = VersionDrift(
            ref=version.ref,
            weights_hash=version.weights_hash,
            training_records=len(train),
            traffic_records=len(recent),
            enough=enough,
            features=features,
            score=score,
            drifted=any(f.drifted for f in features),
            human=human_view(store, version),
        )

        # report
        result = write_report(result, settings, settings.report_path or str(rayft_home() / "drift"))
        if enough:
            scores = {f.feature: (f.psi, f.drifted) for f in features} | {"max": (score, result.drifted)}
            store.set_drift(version.ref, scores, storage.join(result.folder, "drift.json"))
        results.append(result)
    return results


def print_drift(results: list[VersionDrift]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table("version", "traffic", "feature", "PSI", "p-value", "drifted", title="drift")
    for result in results:
        if not result.enough:
            table.add_row(result.ref, str(result.traffic_records), "not enough traffic", "", "", "")
        for feature in result.features:
            flag = "[red]yes[/red]" if feature.drifted else "no"
            row = (feature.feature, f"{feature.psi:.3f}", f"{feature.p_value:.3g}", flag)
            table.add_row(result.ref, str(result.traffic_records), *row)
    Console().print(table)
    for result in results:
        print(f"{result.ref}: report in {result.folder}")
