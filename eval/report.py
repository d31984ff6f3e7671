"""An eval's answers turned into the report (`EvalReport`): metrics per variant (with the pair metrics
whenever the test rows are preference pairs, whatever the task), forgetting, samples; and the report
for people: report.md, the terminal table, the gate's checks as a table.

`report.json` is the whole report (also stored with the version in the registry); `report.md` is
the same for people, with the plots next to it.
"""

from __future__ import annotations

import json
import math

from rayft.config import LOWER_IS_BETTER, EvalConfig
from rayft.eval.metrics import SCORED_TASKS, answer_rate, pair_margins, perplexity, preference_metrics, task_metrics
from rayft.eval.prompts import answer_text
from rayft.eval.quantized import markdown_lines as quantization_markdown
from rayft.eval.results import Check, Compared, EvalReport, Forgetting
from rayft.eval.review_report import markdown as review_markdown

SAMPLES_IN_REPORT = 5


def _values(frame, column: str) -> list:
    """A result column as a list, with pandas' NaN for missing numbers turned back into None."""
    return [None if isinstance(x, float) and math.isnan(x) else x for x in frame[column].tolist()]


def preference_pairs(test):
    """The test rows that are preference pairs."""
    return test[test["rejected"] != ""]


def variant_margins(pairs, variant: str) -> list[float | None]:
    """log p(chosen) − log p(rejected) of each pair for `variant` (None: not scored)."""
    return pair_margins(_values(pairs, f"nll:{variant}"), _values(pairs, f"nll_rejected:{variant}"))


def variant_metrics(test, variant: str, config: EvalConfig) -> dict:
    """The task's metrics, the pair metrics on preference pairs, and perplexity (of the preferred
    replies on pairs) of one variant on the test rows."""
    metrics = (
        {}
        if config.task in SCORED_TASKS
        else task_metrics(config, _values(test, f"output:{variant}"), test["answer"].tolist())
    )
    pairs = preference_pairs(test)
    if not pairs.empty:
        metrics |= preference_metrics(variant_margins(pairs, variant), variant_margins(pairs, "base"))
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


def sample(row: dict, variants: list[str]) -> dict:
    """One test row for the report: prompt, reference and each variant's output; for a pair also
    the other reply and each variant's margin."""
    shown = {"prompt": json.loads(row["prompt"])[-1]["content"], "reference": row["answer"]}
    shown |= {v: row[f"output:{v}"] for v in variants}
    if row["rejected"]:
        margins = pair_margins(
            [_number_or_none(row[f"nll:{v}"]) for v in variants],
            [_number_or_none(row[f"nll_rejected:{v}"]) for v in variants],
        )
        shown |= {"rejected": answer_text(json.loads(row["rejected"])), "margins": dict(zip(variants, margins))}
    return shown


def _number_or_none(value):
    return None if value is None or (isinstance(value, float) and math.isnan(value)) else value


def build_report(
    table,
    version,
    config: EvalConfig,
    variants: list[str],
    examples: list,
    decoding: dict,
    current: dict | None = None,
    parent=None,
) -> EvalReport:
    """The report of one eval run from its answered rows (a pandas frame). `current` maps each gated
    alias to the version it pointed at, answered as the variant named by that version's ref, and
    `parent` is the version the candidate continues (or None), answered as variant "parent"."""
    test = table[table["set"] == "test"]
    samples = [sample(row, variants) for row in test.head(SAMPLES_IN_REPORT).to_dict("records")]
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
        parent=Compared(ref=parent.ref, weights_hash=parent.weights_hash) if parent else None,
        decoding=decoding,
        samples=samples,
    )


def _number(value) -> str:
    return "-" if value is None else f"{value:.4g}"


def variant_label(report: EvalReport, variant: str) -> str:
    """How a variant is headed in tables and plots: the parent with its ref, a version in
    production with its alias."""
    if variant == "parent" and report.parent:
        return f"parent ({report.parent.ref})"
    aliases = [alias for alias, c in report.compared.items() if c.ref == variant]
    return f"{variant} ({', '.join(aliases)})" if aliases else variant


def plotted_margins(table, report: EvalReport) -> dict[str, list[float]]:
    """The scored pair margins of the base, the parent (when there is one) and the candidate, by
    their label in the report; empty when the test rows are no pairs."""
    pairs = preference_pairs(table[table["set"] == "test"])
    if pairs.empty:
        return {}
    shown = ["base"] + (["parent"] if report.parent else []) + ["candidate"]
    return {variant_label(report, v): [m for m in variant_margins(pairs, v) if m is not None] for v in shown}


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
    ]
    if report.parent:
        lines += ["", f"Parent: `{report.parent.ref}`, the version it continues, answered beside it."]
    pairs = report.metrics["candidate"].get("scored_pairs")
    if pairs is not None:
        lines += [
            "",
            f"Preference pairs ({pairs + report.metrics['candidate']['unscored_pairs']}): preference accuracy is "
            "the share of pairs where log p(chosen) > log p(rejected) after the prompt (a pair that could not "
            "be scored counts as wrong); reward margin is the mean of log p(chosen) − log p(rejected) minus the "
            "base's on the same pair: DPO's implicit reward margin, the base as reference, β = 1.",
        ]
    lines += [
        "",
        "| metric | " + " | ".join(variant_label(report, v) for v in variants) + " |",
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
    if report.quantization:
        lines += quantization_markdown(report.quantization)
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
    for shown in report.samples:
        lines += [f"- **prompt**: {shown['prompt']!r}", f"  - reference: {shown['reference']!r}"]
        lines += [f"  - rejected: {shown['rejected']!r}"] if "rejected" in shown else []
        margins = shown.get("margins", {})
        for v in variants:
            said = [repr(shown.get(v))] if shown.get(v) is not None or v not in margins else []
            said += [f"margin {_number(margins[v])}"] if v in margins else []
            lines.append(f"  - {v}: {', '.join(said)}")
    return "\n".join(lines) + "\n"


def print_report(report: EvalReport) -> None:
    """The headline metrics of an eval report as a table, and where the report is."""
    from rich.console import Console
    from rich.table import Table

    headers = [variant_label(report, v) for v in report.metrics]
    table = Table("metric", *headers, title=f"eval of {report.candidate} on {report.n} test records")
    for name, values in headline(report):
        table.add_row(name, *values)
    console = Console()
    console.print(table)
    if report.quantization:
        console.print(" ".join(quantization_markdown(report.quantization)).strip())
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
