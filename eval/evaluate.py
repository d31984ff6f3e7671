"""`rayft eval`: a registered version against its base, its base shown few-shot examples, and the
version in production, on the test split, plus a forgetting check, with a report, plots and the
promotion gate's verdict.

setup   resolve the candidate in the registry, its base, and the versions its gated aliases (`prod`)
        point at now; the test split (Ray Data) and the forgetting set as rows; k few-shot examples
        from the training split; which variants each engine answers
run     vLLM engines in a Ray Data actor pool answer and score every row for each variant (an adapter
        shares its base's engine; a full model gets its own); every registry version is verified
        against its weights hash before it is loaded; a progress bar follows the rows
report  metrics per variant and the forgetting drop, report.json + report.md + PNG plots in the report
        folder (local or object storage), attached to the version in the registry
"""

from __future__ import annotations

import dataclasses
import json
import time
from functools import partial

from rayft import storage
from rayft.config import RayftConfig
from rayft.eval import plots
from rayft.eval.gate import gate_checks
from rayft.eval.generate import Decoding, Variant, answer_with_engines
from rayft.eval.metrics import extract_label, json_label
from rayft.eval.prompts import few_shot_examples, forgetting_records, read_test_split
from rayft.eval.report import build_report, markdown
from rayft.eval.results import EvalReport, ReportFiles
from rayft.eval.review_report import summarize
from rayft.feedback import FeedbackStore
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry, artifact_key, gated_aliases, verified_artifact
from rayft.runtime import ensure_ray

FORGETTING_MAX_NEW_TOKENS = 32  # the forgetting set's answers are short sentences


def current_versions(registry: Registry, version: ModelVersion) -> dict[str, ModelVersion]:
    """The versions the gated aliases of the candidate's name point at now (their primary target),
    by alias, leaving out the candidate itself: what it must not be worse than."""
    return {
        alias.alias: registry.get(f"{alias.name}:{alias.primary}")
        for alias in registry.aliases(version.name)
        if alias.alias in gated_aliases() and alias.primary != version.version
    }


def plan_engines(
    version: ModelVersion, current: list[ModelVersion], examples: list, forgetting: bool, template: str | None, base_of
) -> list[tuple[str | ModelVersion, list[Variant]]]:
    """[(model, variants)] per engine. The candidate's base answers as itself and few-shot (with
    `template`, the config's chat template), and hosts an adapter candidate; every version in
    `current` answers the test rows too, an adapter on its base's engine. A full version gets an
    engine of its own. `base_of(uri)` is the engine model for a base path: its registry version, or
    the path itself."""
    engines: dict[str, tuple[str | ModelVersion, list[Variant]]] = {}

    def engine(model: str | ModelVersion) -> list[Variant]:
        key = artifact_key(model.artifact_uri if isinstance(model, ModelVersion) else model)
        return engines.setdefault(key, (model, []))[1]

    def place(answering: ModelVersion, variant: Variant) -> None:
        if answering.kind == "adapter":
            engine(base_of(answering.base_model)).append(dataclasses.replace(variant, adapter=answering))
        else:
            engine(answering).append(dataclasses.replace(variant, template=None))  # its artifact's own template

    sets = ("test", "forgetting") if forgetting else ("test",)
    engine(base_of(version.base_model)).extend(
        [Variant("base", sets=sets, template=template)]
        + ([Variant("few_shot", few_shot=examples, template=template)] if examples else [])
    )
    place(version, Variant("candidate", sets=sets, template=template))
    for holder in current:
        place(holder, Variant(holder.ref, template=template))
    return list(engines.values())


def check_local_artifacts(engines: list[tuple[str | ModelVersion, list[Variant]]]) -> None:
    """Refuse before any engine starts when a registry version on local disk no longer has its
    registered bytes (`storage.ArtifactMismatch`); the engines check again, remote ones after download."""
    for model, variants in engines:
        for version in [model] + [v.adapter for v in variants]:
            if isinstance(version, ModelVersion) and not storage.is_remote(version.artifact_uri):
                verified_artifact(version)


def collect(rows, total: int, title: str, show_progress: bool):
    """Run the pipeline, following finished rows with a progress bar; the answered rows as pandas."""
    import pandas as pd
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    frames = []
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, disable=not show_progress) as bar:
        task = bar.add_task(title, total=total)
        for frame in rows.iter_batches(batch_size=None, batch_format="pandas"):
            frames.append(frame)
            bar.advance(task, len(frame))
    return pd.concat(frames, ignore_index=True)


def count_test_rows(dataset_dir: str, limit: int | None) -> int:
    path = storage.join(dataset_dir, "test.parquet")
    rows = storage.parquet_file(path).metadata.num_rows if storage.exists(path) else 0
    return min(rows, limit) if limit else rows


def write_report(report: EvalReport, table, version: ModelVersion, root: str) -> EvalReport:
    """report.json, report.md and the plots in `root/NAME/VERSION` (uploaded when `root` is a URI)."""
    target = storage.join(root, version.name, str(version.version))
    with storage.writable_dir(target) as out:
        drawn = {
            "metrics": plots.metric_bars(report, out / "metrics.png"),
            "confusion": plots.confusion_matrices(report, out / "confusion.png"),
            "training": plots.training_curve(version.metrics.get("run_dir"), out / "training_loss.png"),
        }
        files = ReportFiles(
            json="report.json", markdown="report.md", plots={name: path.name for name, path in drawn.items() if path}
        )
        report = report.model_copy(
            update={"files": files, "folder": target, "path": storage.join(target, "report.json")}
        )
        (out / "report.md").write_text(markdown(report))
        (out / "report.json").write_text(json.dumps(report.to_record(), indent=2) + "\n")
        table.to_json(out / "answers.jsonl", orient="records", lines=True)
    return report


def evaluate(config: RayftConfig, candidate: str | None = None, show_progress: bool = True) -> EvalReport:
    """Evaluate `candidate` (default: the latest version of the config's name) against its base and
    few-shot base; returns the report, which is also stored with the version in the registry."""
    # setup
    eval_config = config.eval
    registry = Registry()
    version = registry.get(candidate or config.name)
    current = current_versions(registry, version)
    ensure_ray()
    dataset_dir = config.dataset_dir()
    rows = read_test_split(dataset_dir, eval_config.limit)
    forgetting = forgetting_records(eval_config.forgetting_set) if eval_config.forgetting else []
    if forgetting:
        import ray

        rows = rows.union(ray.data.from_items(forgetting))
    label = (
        partial(json_label, path=eval_config.label_json)
        if eval_config.label_json
        else partial(extract_label, pattern=eval_config.label_regex)
        if eval_config.task == "classification"
        else None
    )
    examples = few_shot_examples(dataset_dir, eval_config.few_shot, eval_config.seed, label)
    engines = plan_engines(
        version,
        list({v.ref: v for v in current.values()}.values()),
        examples,
        eval_config.forgetting,
        config.model.chat_template,
        lambda uri: registry.find_by_artifact(uri) or uri,
    )
    check_local_artifacts(engines)
    decoding = Decoding(
        max_new_tokens={"test": eval_config.max_new_tokens, "forgetting": FORGETTING_MAX_NEW_TOKENS},
        max_model_len=eval_config.max_model_len or config.serve.max_model_len,
        generate=eval_config.task != "perplexity",
        score=eval_config.perplexity,
        tool_parser=config.model.tool_parser,
    )

    # run
    started = time.time()
    answered = answer_with_engines(rows, engines, decoding, eval_config)
    total = count_test_rows(dataset_dir, eval_config.limit) + len(forgetting)
    table = collect(answered, total, f"eval {version.ref}", show_progress)

    # report
    holders = [v.name for _, stage in engines for v in stage if v.name not in ("base", "few_shot", "candidate")]
    variants = ["base"] + (["few_shot"] if examples else []) + ["candidate"] + holders
    report = build_report(
        table,
        version,
        eval_config,
        variants,
        examples,
        {"temperature": 0.0, "max_new_tokens": decoding.max_new_tokens},
        current,
    )
    holders = {f"{version.name}:{alias}": holder for alias, holder in current.items()}
    human = summarize(FeedbackStore(registry.path), version)
    report = report.model_copy(
        update={
            "seconds": round(time.time() - started, 1),
            "verdict": gate_checks(version, report, holders, human),
            "human_review": human if human.reviewers else None,
        }
    )
    report = write_report(report, table, version, eval_config.report_path or str(rayft_home() / "eval"))
    registry.set_eval_report(version.ref, report.to_record())
    return report
