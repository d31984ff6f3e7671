"""`rayft eval`: a registered version against its base on the test split, same prompts and decoding.

setup   resolve the candidate in the registry, read the test split (prompt = all turns but the last
        assistant answer, reference = that answer)
run     generate with vLLM in a Ray Data actor: the base and the candidate (an adapter on the same
        engine, or a full model on its own)
report  metrics per model, written to report.json and attached to the version in the registry
"""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from rayft.config import RayftConfig
from rayft.eval.generate import generate_answers
from rayft.eval.metrics import classification_metrics
from rayft.home import rayft_home
from rayft.registry import Registry
from rayft.runtime import ensure_ray

SAMPLES_IN_REPORT = 5


def split_prompt(batch: pa.Table) -> dict[str, list]:
    """Ray Data UDF: conversations to a prompt (JSON messages) and the reference answer."""
    prompts, answers = [], []
    for conversation in batch.column("messages").to_pylist():
        messages = [{k: v for k, v in m.items() if v is not None} for m in conversation]
        prompts.append(json.dumps(messages[:-1], ensure_ascii=False))
        answers.append(messages[-1]["content"])
    return {"prompt": prompts, "answer": answers}


def read_test_split(dataset_dir: Path, limit: int | None):
    import ray

    path = dataset_dir / "test.parquet"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: run `rayft data prepare` first")
    rows = ray.data.read_parquet(str(path)).select_columns(["messages"])
    if limit:
        rows = rows.limit(limit)
    return rows.map_batches(split_prompt, batch_format="pyarrow")


def evaluate(config: RayftConfig, candidate: str | None = None) -> dict:
    """Evaluate `candidate` (default: the latest version of the config's name) against its base."""
    # setup
    registry = Registry()
    version = registry.get(candidate or config.name)
    ensure_ray()
    rows = read_test_split(config.dataset_dir(), config.eval.limit)
    settings = (config.serve.max_model_len, config.eval.max_new_tokens)

    # run
    if version.kind == "adapter":
        answered = generate_answers(rows, version.base_model, {"base": None, "candidate": version.artifact_uri}, *settings)
    else:
        answered = generate_answers(rows, version.base_model, {"base": None}, *settings)
        answered = generate_answers(answered, version.artifact_uri, {"candidate": None}, *settings)
    table = answered.to_pandas()

    # report
    answers = table["answer"].tolist()
    metrics = {
        name: classification_metrics(table[f"output:{name}"].tolist(), answers, config.eval.label_regex)
        for name in ("base", "candidate")
    }
    report = {
        "candidate": version.ref,
        "base_model": version.base_model,
        "dataset_hash": version.dataset_hash,
        "n": len(table),
        "task": config.eval.task,
        "metrics": metrics,
        "samples": [
            {"prompt": json.loads(row["prompt"])[-1]["content"], "reference": row["answer"],
             "base": row["output:base"], "candidate": row["output:candidate"]}
            for row in table.head(SAMPLES_IN_REPORT).to_dict("records")
        ],
    }
    out_dir = rayft_home() / "eval" / version.name / str(version.version)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    report["path"] = str(out_dir / "report.json")
    registry.set_eval_report(version.ref, report)
    return report


def print_report(report: dict) -> None:
    """The headline metrics of an eval report as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", "base", report["candidate"], title=f"eval on {report['n']} test records")
    for metric in ("accuracy", "macro_f1"):
        table.add_row(metric, *(f"{report['metrics'][k][metric]:.3f}" for k in ("base", "candidate")))
    Console().print(table)
    print(f"report: {report['path']}")
