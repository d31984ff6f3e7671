"""`rayft eval`: a registered version against its base, its base shown few-shot examples, the
version it continues (its parent) and the version in production, on the test split, plus a
forgetting check, with a report, plots and the promotion gate's verdict.

setup   resolve the candidate in the registry, its base, its parent, and the versions its gated
        aliases (`prod`) point at now (a quantized candidate: its source as the base, and its
        source's adapters, `quantized.py`); the test split (Ray Data; preference pairs are scored on
        both replies) and the forgetting set as rows; k few-shot examples from the training split;
        which variants each engine answers
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
from rayft.config import ConfigError, RayftConfig
from rayft.eval import plots
from rayft.eval.gate import gate_checks
from rayft.eval.generate import COLUMN_TYPES, Decoding, Variant, answer_with_engines
from rayft.eval.metrics import SCORED_TASKS, extract_label, json_label
from rayft.eval.prompts import few_shot_examples, forgetting_records, holds_pairs, read_test_split
from rayft.eval.quantized import ON_QUANTIZED, adapter_variants, quantization_of, source_adapters
from rayft.eval.quantized import summarize as summarize_quantization
from rayft.eval.report import build_report, markdown, plotted_margins
from rayft.eval.results import EvalReport, ReportFiles
from rayft.eval.review_report import summarize
from rayft.feedback import FeedbackStore
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry, RegistryError, artifact_key, gated_aliases, verified_artifact
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


def continued_version(registry: Registry, version: ModelVersion) -> ModelVersion | None:
    """The registered version the candidate continues (`train.init_from`, or an earlier export of
    its run), whatever its name: its parent, unless that is its base (a registry base is a parent
    too, and `beats_base` already compares it) or no longer in the registry."""
    if not version.parent:
        return None
    try:
        parent = registry.get(version.parent)
    except RegistryError:
        return None
    return None if artifact_key(parent.artifact_uri) == artifact_key(version.base_model) else parent


def plan_engines(
    version: ModelVersion,
    current: list[ModelVersion],
    examples: list,
    forgetting: bool,
    template: str | None,
    base_of,
    parent: ModelVersion | None = None,
    source_adapters: list[ModelVersion] = (),
) -> list[tuple[str | ModelVersion, list[Variant]]]:
    """[(model, variants)] per engine. The candidate's base answers as itself and few-shot (with
    `template`, the config's chat template), and hosts an adapter candidate; the `parent` (as
    variant "parent") and every version in `current` (named by its ref) answer the test rows too,
    an adapter on its base's engine. A full version gets an engine of its own. `base_of(uri)` is
    the engine model for a base path: its registry version, or the path itself. Each of
    `source_adapters` (a quantized candidate's) answers on its base's engine and on the candidate's."""
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
    if parent:
        place(parent, Variant("parent", template=template))
    for holder in current:
        place(holder, Variant(holder.ref, template=template))
    for adapter in source_adapters:
        place(adapter, Variant(adapter.ref, template=template))
        engine(version).append(Variant(adapter.ref + ON_QUANTIZED, adapter=adapter, template=template))
    return list(engines.values())


def check_local_artifacts(engines: list[tuple[str | ModelVersion, list[Variant]]]) -> None:
    """Refuse before any engine starts when a registry version on local disk no longer has its
    registered bytes (`storage.ArtifactMismatch`); the engines check again, remote ones after download."""
    for model, variants in engines:
        for version in [model] + [v.adapter for v in variants]:
            if isinstance(version, ModelVersion) and not storage.is_remote(version.artifact_uri):
                verified_artifact(version)


def with_answers_of(table, source: str, name: str):
    """The answered rows with variant `source`'s columns also under `name`: one version answered
    once in two roles (a parent that is also in production)."""
    return table.assign(**{f"{key}:{name}": table[f"{key}:{source}"] for key in COLUMN_TYPES})


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
            "margins": plots.margin_histograms(
                plotted_margins(table, report), f"preference-pair margins, {report.candidate}", out / "margins.png"
            ),
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
    parent = continued_version(registry, version)
    dataset_dir = config.dataset_dir()
    if eval_config.task == "preference" and not holds_pairs(dataset_dir):
        raise ConfigError(
            f"eval.task: preference scores preference pairs, and the test split of {dataset_dir} holds none: "
            "prepare a preference file (docs/data.md)"
        )
    ensure_ray()
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
    quantization = quantization_of(version)  # judged against its source, which it should match
    adapters = source_adapters(registry, version, eval_config.quantized_adapters) if quantization else []
    examples = [] if quantization else few_shot_examples(dataset_dir, eval_config.few_shot, eval_config.seed, label)
    in_production = {v.ref: v for v in current.values()}
    engines = plan_engines(
        version,
        [v for ref, v in in_production.items() if not (parent and ref == parent.ref)],  # the parent answers once
        examples,
        eval_config.forgetting,
        config.model.chat_template,
        lambda uri: registry.find_by_artifact(uri) or uri,
        parent,
        adapters,
    )
    check_local_artifacts(engines)
    decoding = Decoding(
        max_new_tokens={"test": eval_config.max_new_tokens, "forgetting": FORGETTING_MAX_NEW_TOKENS},
        max_model_len=eval_config.max_model_len or config.serve.max_model_len,
        generate=eval_config.task not in SCORED_TASKS,
        score=eval_config.perplexity,
        tool_parser=config.model.tool_parser,
    )

    # run
    started = time.time()
    answered = answer_with_engines(rows, engines, decoding, eval_config)
    total = count_test_rows(dataset_dir, eval_config.limit) + len(forgetting)
    table = collect(answered, total, f"eval {version.ref}", show_progress)
    if parent and parent.ref in in_production:
        table = with_answers_of(table, "parent", parent.ref)

    # report
    variants = ["base"] + (["few_shot"] if examples else []) + ["candidate"] + (["parent"] if parent else [])
    variants += list(in_production) + adapter_variants(adapters)
    report = build_report(
        table,
        version,
        eval_config,
        variants,
        examples,
        {"temperature": 0.0, "max_new_tokens": decoding.max_new_tokens},
        current,
        parent,
    )
    if quantization:
        report = report.model_copy(
            update={"quantization": summarize_quantization(table, report, quantization, adapters)}
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
