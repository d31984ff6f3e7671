"""An eval's answers turned into the report (`EvalReport`): metrics per variant, forgetting, samples;
and the report for people: report.md, the terminal table, the gate's checks as a table.

`report.json` is the whole report (also stored with the version in the registry); `report.md` is
the same for people, with the plots next to it.
"""

from __future__ import annotations

import json
import math

from rayft.config import LOWER_IS_BETTER, EvalConfig
from rayft.eval.metrics import answer_rate, perplexity, task_metrics
from rayft.eval.results import Check, Compared, EvalReport, Forgetting
from rayft.eval.review_report import markdown as review_markdown

SAMPLES_IN_REPORT = 5


def _values(frame, column: str) -> list:
    """A result column as a list, with pandas' NaN for missing numbers turned back into None."""
    return [None if isinstance(x, float) and math.isnan(x) else x for x in frame[column].tolist()]


def variant_metrics(test, variant: str, config: EvalConfig) -> dict:
    """The task's metrics (and perplexity) of one variant on the test rows."""
    metrics = (
        {}
        if config.task == "perplexity"
        else task_metrics(config, _values(test, f"output:{variant}"), test["answer"].tolist())
    )
    if config.perplexity:
        metrics |= perplexity(_values(test, f"nll:{variant}"), _values(test, f"tokens:{variant}"))
    if variant == "few_shot":
        metrics["mean_shots"] = sum(_values(test, "shots:few_shot")) / max(len(test), 1)
    return metrics


def forgetting_summary(rows, config: EvalConfig) -> Forgetting | None:
    """Answer rate (and perplexity) of base and candidate on the forgetting set, and the drop."""
    if rows.empty:
        return None
    scores = {}
    for variant in ("base", "candidate"):
        scores[variant] = {"answer_rate": answer_rate(_values(rows, f"output:{variant}"), rows["expected"].tolist())}
        if config.perplexity:
            scores[variant] |= perplexity(_values(rows, f"nll:{variant}"), _values(rows, f"tokens:{variant}"))
    base_ppl, candidate_ppl = (scores[v].get("perplexity") for v in ("base", "candidate"))
    return Forgetting(
        base=scores["base"],
        candidate=scores["candidate"],
        n=len(rows),
        drop=scores["base"]["answer_rate"] - scores["candidate"]["answer_rate"],
        perplexity_increase=candidate_ppl / base_ppl - 1 if base_ppl and candidate_ppl else None,
    )


def build_report(
    table, version, config: EvalConfig, variants: list[str], examples: list, decoding: dict, current: dict | None = None
) -> EvalReport:
    """The report of one eval run from its answered rows (a pandas frame). `current` maps each gated
    alias to the version it pointed at, answered as the variant named by that version's ref."""
    test = table[table["set"] == "test"]
    samples = [
        {"prompt": json.loads(row["prompt"])[-1]["content"], "reference": row["answer"]}
        | {v: row[f"output:{v}"] for v in variants}
        for row in test.head(SAMPLES_IN_REPORT).to_dict("records")
    ]
    return EvalReport(
        candidate=version.ref,
        kind=version.kind,
        base_model=version.base_model,
        weights_hash=version.weights_hash,
        dataset_hash=version.dataset_hash,
        n=len(test),
        task=config.task,
        primary_metric=config.primary_metric,
        lower_is_better=config.primary_metric in LOWER_IS_BETTER,
        metrics={v: variant_metrics(test, v, config) for v in variants},
        few_shot={"k": config.few_shot, "examples": examples} if "few_shot" in variants else None,
        forgetting=forgetting_summary(table[table["set"] == "forgetting"], config) if config.forgetting else None,
        gate=config.gate,
        compared={alias: Compared(ref=v.ref, weights_hash=v.weights_hash) for alias, v in (current or {}).items()},
        decoding=decoding,
        samples=samples,
    )


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def headline(report: EvalReport) -> list[tuple[str, list[str]]]:
    """Rows of (metric, value per variant) for the tables in report.md and on the terminal."""
    names = [report.primary_metric] + [
        k
        for k, v in report.metrics["candidate"].items()
        if isinstance(v, float) and k not in (report.primary_metric, "nll")
    ]
    rows = [(name, [_number(m.get(name)) for m in report.metrics.values()]) for name in names]
    forgetting = report.forgetting
    for name in ("answer_rate", "perplexity") if forgetting else ():
        scores = {"base": forgetting.base, "candidate": forgetting.candidate}
        rows.append(
            (
                f"forgetting {name.replace('_', ' ')}",
                [_number(scores[v].get(name)) if v in scores else "-" for v in report.metrics],
            )
        )
    return rows


def markdown(report: EvalReport) -> str:
    """report.md: the comparison, the gate's verdict, per-class scores, plots and samples."""
    variants = list(report.metrics)
    lines = [
        f"# Eval of {report.candidate} ({report.kind})",
        "",
        f"Base `{report.base_model}`, {report.n} test records, task {report.task}, primary metric "
        f"**{report.primary_metric}**{' (lower is better)' if report.lower_is_better else ''}; "
        f"greedy decoding, same prompts for every variant.",
        "",
        "| metric | " + " | ".join(variants) + " |",
        "|---|" + "---|" * len(variants),
    ]
    lines += [f"| {name} | " + " | ".join(values) + " |" for name, values in headline(report)]
    if report.forgetting:
        f = report.forgetting
        lines += [
            "",
            f"Forgetting set ({f.n} general-purpose questions): answer rate {f.base['answer_rate']:.3f} "
            f"→ {f.candidate['answer_rate']:.3f} (drop {f.drop:+.3f})"
            + (f", perplexity {f.perplexity_increase:+.0%}." if f.perplexity_increase is not None else "."),
        ]
    lines += ["", "## Promotion gate", ""] + [
        f"- {'pass' if c.passed else 'FAIL'}: {c.name}: {c.detail}" for c in report.verdict
    ]
    if report.human_review:
        lines += ["", review_markdown(report.human_review)]
    per_class = report.metrics["candidate"].get("per_class")
    if per_class:
        lines += [
            "",
            "## Candidate per class",
            "",
            "| class | precision | recall | f1 | support |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {k} | {v['precision']:.3f} | {v['recall']:.3f} | {v['f1']:.3f} | {v['support']} |"
            for k, v in per_class.items()
        ]
    lines += ["", "## Plots", ""] + [f"![{name}]({file})" for name, file in report.files.plots.items()]
    lines += ["", "## Samples", ""]
    for sample in report.samples:
        lines += [f"- **prompt**: {sample['prompt']!r}", f"  - reference: {sample['reference']!r}"]
        lines += [f"  - {v}: {sample.get(v)!r}" for v in variants]
    return "\n".join(lines) + "\n"


def print_report(report: EvalReport) -> None:
    """The headline metrics of an eval report as a table, and where the report is."""
    from rich.console import Console
    from rich.table import Table

    table = Table("metric", *report.metrics, title=f"eval of {report.candidate} on {report.n} test records")
    for name, values in headline(report):
        table.add_row(name, *values)
    console = Console()
    console.print(table)
    if report.verdict:
        failed = [c.detail for c in report.verdict if not c.passed]
        console.print(
            "promotion gate: "
            + ("[green]would pass[/]" if not failed else "[red]would refuse[/]: " + "; ".join(failed))
        )
    print(f"report: {report.path}")


def print_checks(ref: str, alias: str, checks: list[Check]) -> None:
    """The gate's checks of a promotion as a table."""
    from rich.console import Console
    from rich.table import Table

    table = Table("check", "", "detail", title=f"promotion gate: {ref} → {alias}")
    for check in checks:
        verdict = "[yellow]waived[/]" if check.waived else "[green]pass[/]" if check.passed else "[red]FAIL[/]"
        table.add_row(check.name, verdict, check.detail)
    Console().print(table)
