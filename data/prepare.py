"""`rayft data prepare`: raw files in, clean versioned train/val/test splits out, nothing lost.

setup   resolve inputs (JSONL, Parquet, HF dataset folders) and options, start Ray
run     validate + scrub PII → keep one kind of record (SFT or preference pairs) → drop exact
        duplicates → drop near duplicates (MinHash LSH; a pair's prompt) → split (seeded,
        stratified) → drop val/test records that leak from train
report  write the splits, `rejects.jsonl` (every removed record with its reason), the manifest
        (counts, PII counts, stats, a content hash) and a token-length histogram

Every input record ends in exactly one place, and the manifest's counts satisfy
`input == kept + rejected + duplicates_exact + duplicates_near + leaked`, `kept == train + val + test`.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from ray.data.expressions import col

from rayft import storage
from rayft.config import DataConfig
from rayft.data import dedup, outputs, pii, sources, split
from rayft.data.manifest import MANIFEST, Counts, Manifest, PiiFindings
from rayft.data.preference import reject_other_kind, stored_record, winning_kind
from rayft.data.records import clean_batch, kinds_found, pii_found
from rayft.runtime import ensure_ray

STAGES = ["validate and scrub", "exact duplicates", "near duplicates", "split", "leakage", "write"]


@dataclass
class PrepareOptions:
    """What `prepare_dataset` needs besides the inputs: the data config, a tokenizer and the chat
    template training will use (`model.chat_template`; None: the tokenizer's own)."""

    data: DataConfig = field(default_factory=DataConfig)
    tokenizer: str | None = None  # a model folder or hub id; token limits and stats need it
    chat_template: str | None = None


@contextmanager
def shuffles_as_tasks():
    """Run this pipeline's groupbys as pull-based sort shuffles, which are plain Ray tasks. Ray Data's
    default shuffle starts aggregator actors (new processes) for every groupby: seconds each on a
    small cluster, most of the pipeline's time at 100k records (bench/RESULTS.md)."""
    from ray.data import DataContext
    from ray.data.context import ShuffleStrategy

    context = DataContext.get_current()
    default = context.shuffle_strategy
    context.shuffle_strategy = ShuffleStrategy.SORT_SHUFFLE_PULL_BASED
    try:
        yield
    finally:
        context.shuffle_strategy = default


@contextmanager
def progress(enabled: bool = True):
    """A progress bar over the pipeline's stages; yields `advance(stage_name)`."""
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("data prepare: {task.description}"),
        BarColumn(),
        TimeElapsedColumn(),
        disable=not enabled,
        transient=False,
    )
    with bar:
        task = bar.add_task(STAGES[0], total=len(STAGES))
        yield lambda stage: bar.update(task, advance=1, description=stage)
        bar.update(task, completed=len(STAGES), description="done")


def removed_rows(cleaned, removed: dict[int, tuple[str, int, float]], files: list[str]):
    """Every removed record in reject-file shape: invalid ones as validated, duplicates and leaks
    (`removed`: order -> (reason, order of the record it copies, similarity)) naming their original."""

    def describe(batch):
        out = {k: list(batch[k]) for k in ("order", "source", "line", "reason", "message", "record")}
        out["duplicate_of"], out["similarity"] = [""] * len(out["order"]), [0.0] * len(out["order"])
        for i, order in enumerate(batch["order"]):
            if int(order) not in removed:
                continue
            reason, original, similarity = removed[int(order)]
            where = sources.locate(original, files)
            out["reason"][i], out["record"][i] = reason, stored_record(batch["messages"][i], batch["rejected"][i])
            out["message"][i] = f"{reason.replace('_', ' ')} of {where['source']}:{where['line']}"
            out["duplicate_of"][i], out["similarity"][i] = json.dumps(where), similarity
        return out

    wanted = (col("status") == "rejected") | col("order").is_in(list(removed))
    columns = ["order", "source", "line", "reason", "message", "record", "messages", "rejected"]
    return cleaned.filter(expr=wanted).select_columns(columns).map_batches(describe, batch_format="numpy")


def drop_orders(rows, orders: dict):
    return rows.filter(expr=~col("order").is_in(list(orders))) if orders else rows


def prepare_dataset(
    inputs: list[str], out_dir: str | Path, options: PrepareOptions | None = None, show_progress: bool = True
) -> Manifest:
    """Prepare `inputs` into `out_dir`, a folder or an `s3://` / `gs://` URI; returns the manifest
    (also written as manifest.json). Bad inputs and a bad PII detector are refused before anything
    is written. Everything is written to a scratch folder that replaces `out_dir` only when the
    whole run succeeded (`storage.replaced_dir`): a failed run leaves the previous version whole."""
    options = options or PrepareOptions()
    pii.load_detector(options.data.pii_detector)
    files = sources.expand_inputs(inputs)
    with storage.replaced_dir(out_dir, last=MANIFEST) as local:
        return prepare_into(files, local, options, show_progress)


def prepare_into(files: list[str], out_dir: Path, options: PrepareOptions, show_progress: bool) -> Manifest:
    """The pipeline of `prepare_dataset` over expanded input files, writing into a local folder."""
    # setup
    data = options.data
    ensure_ray()

    # run
    with shuffles_as_tasks(), progress(show_progress) as advance:
        cleaned = (
            sources.read_records(files)
            .map_batches(
                clean_batch,
                fn_kwargs={
                    "data_json": data.model_dump_json(),
                    "tokenizer": options.tokenizer,
                    "chat_template": options.chat_template,
                },
                batch_size=1024,
            )
            .materialize()
        )
        found = kinds_found(cleaned)
        kind = winning_kind(found)
        if len([n for n in found.values() if n]) > 1:
            fn_kwargs = {"kind": kind, "found": found}
            cleaned = cleaned.map_batches(reject_other_kind, fn_kwargs=fn_kwargs, batch_format="numpy").materialize()
        valid = cleaned.filter(expr=col("status") == "ok")
        prompts_only = kind == "preference"  # near duplicates and leaks compare pairs by their prompt
        advance(STAGES[1])

        exact = dedup.exact_duplicates(valid) if data.dedup else {}
        unique = drop_orders(valid, exact)
        advance(STAGES[2])

        near = {}
        if data.near_dup_threshold:
            pairs = dedup.candidate_pairs(unique, data.near_dup_threshold, data.num_perm, False, salt=0)
            near = dedup.keep_first(dedup.verified_pairs(unique, pairs, data.near_dup_threshold, prompts_only))
        kept = drop_orders(unique, near)
        advance(STAGES[3])

        fractions = data.split.model_dump()
        stratified = kept.with_column("stratum", col("label" if data.stratify_by == "label" else "called_tools"))
        assigned = split.assign_splits(stratified, fractions, data.seed).materialize()
        advance(STAGES[4])

        leaked = {}
        if data.leak_threshold:
            pairs = dedup.candidate_pairs(assigned, data.leak_threshold, data.num_perm, True, salt=data.seed + 1)
            verified = dedup.verified_pairs(assigned, pairs, data.leak_threshold, prompts_only)
            for train_order, other, similarity in verified:
                if similarity >= leaked.get(other, (0, 0.0))[1]:
                    leaked[other] = (train_order, similarity)
        final = drop_orders(assigned, leaked)
        advance(STAGES[5])

        # report
        removed = {
            order: (reason, original, similarity)
            for found, reason in ((exact, "duplicate_exact"), (near, "duplicate_near"), (leaked, "leaked_into_eval"))
            for order, (original, similarity) in found.items()
        }
        reasons = outputs.write_rejects(removed_rows(cleaned, removed, files), out_dir / "rejects.jsonl")
        counts, dataset_hash, stats = outputs.write_splits(final, out_dir)
    lengths = stats.pop("_lengths")
    special = {"duplicate_exact", "duplicate_near", "leaked_into_eval"}
    tally = Counts(
        input=cleaned.count(),
        kept=sum(counts.values()),
        rejected=sum(n for r, n in reasons.items() if r not in special),
        duplicates_exact=len(exact),
        duplicates_near=len(near),
        leaked=len(leaked),
        **counts,
    )
    if tally.kept + tally.removed() != tally.input:
        raise RuntimeError(f"records lost: read {tally.input}, accounted for {tally.kept + tally.removed()}")
    manifest = Manifest(
        dataset_hash=dataset_hash,
        kind=kind,
        counts=tally,
        rejects_by_reason={r: n for r, n in reasons.items() if r not in special},
        pii=PiiFindings(mode=data.pii, found=pii_found(cleaned)),
        inputs=files,
        config=data.model_dump(),
        tokenizer=options.tokenizer,
        stats=stats,
        warnings=outputs.warnings_for(tally, stats, data.warn_min_class, data.warn_min_records, options.tokenizer),
    )
    outputs.plot_token_lengths(lengths, out_dir / "token_lengths.png", data.max_tokens)
    (out_dir / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
    return manifest
