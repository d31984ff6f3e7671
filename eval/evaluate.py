"""`rayft eval`: a registered version against its base, and against its base shown few-shot examples,
on the test split, plus a forgetting check, with a report, plots and the promotion gate's verdict.

setup   resolve the candidate in the registry; the test split (Ray Data) and the forgetting set as
        rows; k few-shot examples from the training split; which variants each engine answers
run     vLLM engines in a Ray Data actor pool answer and score every row for each variant (an adapter
        shares the base's engine; a full model gets its own); a progress bar follows the rows
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
from rayft.home import rayft_home
from rayft.registry import ModelVersion, Registry
from rayft.runtime import ensure_ray

FORGETTING_MAX_NEW_TOKENS = 32  # the forgetting set's answers are short sentences


def plan_engines(version: ModelVersion, examples: list, forgetting: bool) -> list[tuple[str, list[Variant]]]:
    """[(model, variants)] per engine: the base answers as itself and few-shot, and hosts an adapter
    candidate; a full candidate gets an engine of its own."""
    sets = ("test", "forgetting") if forgetting else ("test",)
    base = [Variant("base", sets=sets)] + ([Variant("few_shot", few_shot=examples)] if examples else [])
    if version.kind == "adapter":
        return [(version.base_model, base + [Variant("candidate", adapter=version.artifact_uri, sets=sets)])]
    return [(version.base_model, base), (version.artifact_uri, [Variant("candidate", sets=sets)])]


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


def write_report(report: dict, table, version: ModelVersion, root: str) -> dict:
    """report.json, report.md and the plots in `root/NAME/VERSION` (uploaded when `root` is a URI)."""
    target = storage.join(root, version.name, str(version.version))
    with storage.writable_dir(target) as out:
        drawn = {"metrics": plots.metric_bars(report, out / "metrics.png"),
                 "confusion": plots.confusion_matrices(report, out / "confusion.png"),
                 "training": plots.training_curve(version.metrics.get("run_dir"), out / "training_loss.png")}
        files = {"json": "report.json", "markdown": "report.md",
                 "plots": {name: path.name for name, path in drawn.items() if path}}
        report = report | {"files": files, "folder": target, "path": storage.join(target, "report.json")}
        (out / "report.md").write_text(markdown(report))
        (out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        table.to_json(out / "answers.jsonl", orient="records", lines=True)
    return report


def evaluate(config: RayftConfig, candidate: str | None = None, show_progress: bool = True) -> dict:
    """Evaluate `candidate` (default: the latest version of the config's name) against its base and
    few-shot base; returns the report, which is also stored with the version in the registry."""
    # setup
    settings = config.eval
    registry = Registry()
    version = registry.get(candidate or config.name)
    ensure_ray()
    dataset_dir = config.dataset_dir()
    rows = read_test_split(dataset_dir, settings.limit)
    forgetting = forgetting_records(settings.forgetting_set) if settings.forgetting else []
    if forgetting:
        import ray

        rows = rows.union(ray.data.from_items(forgetting))
    label = (partial(json_label, path=settings.label_json) if settings.label_json
             else partial(extract_label, pattern=settings.label_regex) if settings.task == "classification" else None)
    examples = few_shot_examples(dataset_dir, settings.few_shot, settings.seed, label)
    engines = plan_engines(version, examples, settings.forgetting)
    decoding = Decoding(
        max_new_tokens={"test": settings.max_new_tokens, "forgetting": FORGETTING_MAX_NEW_TOKENS},
        max_model_len=settings.max_model_len or config.serve.max_model_len,
        generate=settings.task != "perplexity", score=settings.perplexity, chat_template=config.model.chat_template,
    )

    # run
    started = time.time()
    answered = answer_with_engines(rows, engines, decoding, settings)
    total = count_test_rows(dataset_dir, settings.limit) + len(forgetting)
    table = collect(answered, total, f"eval {version.ref}", show_progress)

    # report
    variants = [v.name for _, stage in engines for v in stage]
    report = build_report(table, version, settings, variants, examples,
                          {"temperature": 0.0, "max_new_tokens": decoding.max_new_tokens})
    report["seconds"] = round(time.time() - started, 1)
    report["verdict"] = [c.to_dict() for c in gate_checks(dataclasses.replace(version, eval_report=report))]
    report = write_report(report, table, version, settings.report_path or str(rayft_home() / "eval"))
    registry.set_eval_report(version.ref, report)
    return report

