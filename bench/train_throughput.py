"""Benchmark training throughput on this machine's CPU, every ratio measured side by side in one run.

Run: `.venv/bin/python bench/train_throughput.py [--part NAME ...] [--smoke] [--out FILE]` (JSON on
stdout and in FILE; record it in bench/RESULTS.md). `--smoke` runs every part at the smallest sizes
(the `test` model, a few steps, one round): `make test` runs it (tests/test_bench_smoke.py) so the
bench cannot rot; its numbers mean nothing. Otherwise every part uses a tiny Llama built offline
(`rayft.tiny`, size `bench`: hidden 512, 8 layers, 8 heads, ~27M parameters) in fp32.

padding (a): the same examples, in the same order, trained (full fine-tuning, AdamW) as padded
    micro-batches and as packed rows (`rayft.training.formatting`, the worker's own inputs with
    `use_cache=False`). Lengths are skewed like real chat data: most examples short, a few long.
    Reported: real (non-padding) tokens per second of each, and the ratio (goal >= 2x).
overhead (b): `rayft train` with one worker (Ray Train, DeepSpeed without ZeRO, Ray Data shard) on a
    dataset prepared by `rayft data prepare`, against a plain single-process torch loop on the same
    model, data, batch, optimizer, schedule and step count, run before and after it (A-B-A, Ray
    stopped for both). Every example is truncated to the same length, so every step carries the
    same tokens and step times compare directly. Reported: steady-state tokens/s of each (the first
    WARMUP steps of each left out), the ratio of rayft to the plain runs' mean (goal >= 0.9x), and
    each side's wall time (rayft's includes worker start-up, tokenizing on Ray Data, the checkpoint
    and the export).
deepspeed (c): the plain step against a step through rayft's own DeepSpeed engine (`build_engine`
    with the config one worker gets: no ZeRO, see `deepspeed_config.zero_stage`), and against the
    same engine under ZeRO-2 (what one worker ran before), world size 1 on gloo, no Ray, in one
    process, alternating rounds of ROUND steps, so the machine's drift hits every side alike.
    Reported: median step seconds of each phase (forward, backward, optimizer step) and each
    engine's ratio of total step times to the plain step's. With (b) it tells DeepSpeed's share of
    the overhead from Ray's.
packing (d): rayft's packed training (a's packed side) against TRL's `SFTTrainer` with packing
    (`trl_side.py`): the same examples, model, precision, micro-batch of rows and row length,
    alternating rounds (order reversed every other round). Reported: non-padding tokens/s of each,
    the ratio within each round and its median (goal >= 1.1x), and on one batch of each how far the
    packed loss is from the per-example losses (attention isolation: ~1e-6 when isolated).

dpo (e): one LoRA optimizer step of DPO (`rayft.training.dpo`, the reference being the same model
    with its adapter switched off) against one supervised step, on the same pairs, alternating
    rounds. Reported: median step seconds of each and two ratios: DPO ÷ SFT on the same rows (SFT
    on the chosen and the rejected rows, so both sides run the same tokens through the policy: the
    cost of the reference pass and the pairwise loss, goal <= 2.0x) and DPO ÷ SFT per pair (SFT on
    the chosen rows only: what training on the same file costs).

A part is a function of `Bench` registered in PARTS.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import torch
from train_loop import LR, WARMUP, Bench, Sizes, load, rate, step_inputs, timed_steps
from train_overhead import deepspeed_part, overhead_part

from rayft.data.samples import tokenizer_corpus
from rayft.tiny import build_tiny_model
from rayft.training.formatting import IGNORE_INDEX, pack_examples, packed_batch, pad_batch

MICRO, PACKED_ROWS, ROW_LEN = 8, 2, 512  # padded examples, or packed rows of ROW_LEN, per step: parts (a), (d)
FULL = Sizes("bench", examples=192, steps=14, rounds=3, methods=("lora", "full"))
SMOKE = Sizes("test", examples=48, steps=WARMUP + 1, rounds=1, methods=("lora",))


def skewed_examples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Token rows: 85% short (24-96 tokens), 15% long (256-512); the second half of each is learned."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(256, 512) if rng.random() < 0.15 else rng.randint(24, 96)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
    return examples


def packed_batches(examples: list[dict], pad_id: int) -> list:
    """rayft's packing: rows of at most ROW_LEN tokens, PACKED_ROWS rows a micro-batch."""
    rows = pack_examples(examples, ROW_LEN)
    return [packed_batch(rows[i : i + PACKED_ROWS], pad_id) for i in range(0, len(rows), PACKED_ROWS)]


def padding_part(bench: Bench) -> dict:
    """Part (a): padded micro-batches against rayft's packed rows."""
    examples = skewed_examples(bench.sizes.examples, bench.vocab)
    padded = [pad_batch(examples[i : i + MICRO], bench.pad_id) for i in range(0, len(examples), MICRO)]
    results = {}
    for name, batches in (("padded", padded), ("packed", packed_batches(examples, bench.pad_id))):
        torch.manual_seed(0)
        steps = timed_steps(load(bench.model_dir), batches, bench.pad_id)
        cells = sum(len(row) for b in batches for row in b.input_ids)
        results[name] = {
            "steps": len(steps),
            "tokens_per_s": round(rate(steps), 1),
            "padding_fraction": round(1 - sum(n for _, n in steps) / cells, 3),
        }
    results["speedup"] = round(results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"], 2)
    results["examples"] = len(examples)
    results["mean_tokens"] = round(sum(len(e["input_ids"]) for e in examples) / len(examples), 1)
    return results


def isolation_gap(model, inputs: dict) -> float:
    """|loss of a packed batch − the token-weighted mean of each packed example's loss alone|: about
    1e-6 when attention stays inside each example, 5e-3 or more when it leaks across them. An
    example is a run of positions counting up from 0 (padding after a row is a run with no labels)."""
    with torch.no_grad():
        packed = model(**inputs).loss.item()
        total, count = 0.0, 0
        for ids, labels, positions in zip(inputs["input_ids"], inputs["labels"], inputs["position_ids"]):
            starts = (positions == 0).nonzero().flatten().tolist() + [len(positions)]
            for start, end in zip(starts, starts[1:]):
                learned = int((labels[start + 1 : end] != IGNORE_INDEX).sum())
                if learned:
                    alone = model(input_ids=ids[None, start:end], labels=labels[None, start:end], use_cache=False)
                    total, count = total + alone.loss.item() * learned, count + learned
    return abs(packed - total / count)


def packing_part(bench: Bench) -> dict:
    """Part (d): rayft's packed rows in a plain loop against TRL's SFTTrainer with packing, rounds
    alternating (the order reversed every other round), a fresh model per side and round."""
    from trl_side import trl_packed_run

    examples = skewed_examples(bench.sizes.examples, bench.vocab)
    batches = packed_batches(examples, bench.pad_id)

    rows = [row for batch in batches for row in batch.input_ids]

    def rayft_side() -> dict:
        torch.manual_seed(0)
        model = load(bench.model_dir)
        gap = isolation_gap(model, step_inputs(batches[0]))
        steps = timed_steps(model, batches, bench.pad_id)
        return {"steps": steps, "isolation_gap": gap, "rows": len(rows), "cells": sum(map(len, rows))}

    def trl_side() -> dict:
        torch.manual_seed(0)
        run = trl_packed_run(
            load(bench.model_dir), bench.model_dir, examples, bench.work / "trl", PACKED_ROWS, ROW_LEN, LR
        )
        gap = isolation_gap(run.model, run.first_batch)
        return {"steps": run.steps, "isolation_gap": gap, "rows": run.rows, "cells": run.cells} | run.settings

    sides: dict[str, Callable[[], dict]] = {"rayft": rayft_side, "trl": trl_side}
    runs: dict[str, list[dict]] = {name: [] for name in sides}
    for round_ in range(bench.sizes.rounds):
        for name in list(sides)[:: 1 if round_ % 2 == 0 else -1]:
            runs[name].append(sides[name]())
    ratios = [rate(ours["steps"]) / rate(theirs["steps"]) for ours, theirs in zip(runs["rayft"], runs["trl"])]

    def side(run: list[dict]) -> dict:
        """What the side's rounds measured, and how its packing filled the steps (the same each round)."""
        first = run[0]
        tokens = sum(n for _, n in first["steps"])
        return {
            "tokens_per_s": [round(rate(r["steps"]), 1) for r in run],
            "steps": len(first["steps"]),
            "rows": first["rows"],
            "tokens_per_step": round(tokens / len(first["steps"]), 1),
            "padding_fraction": round(1 - tokens / first["cells"], 3),
            "isolation_gap": max(r["isolation_gap"] for r in run),
        } | {k: v for k, v in first.items() if k not in ("steps", "rows", "cells", "isolation_gap")}

    return {
        "examples": len(examples),
        "micro_batch_rows": PACKED_ROWS,
        "max_seq_len": ROW_LEN,
        "rayft": side(runs["rayft"]),
        "trl": side(runs["trl"]),
        "ratios_per_round": [round(r, 3) for r in ratios],
        "ratio_rayft_over_trl": round(statistics.median(ratios), 3),
    }


def preference_pairs(n: int, vocab: int) -> list[dict]:
    """Pairs over `skewed_examples`: the rejected reply is the chosen one's learned half redrawn."""
    rng = random.Random(1)
    pairs = []
    for e in skewed_examples(n, vocab, seed=2):
        rejected = [
            t if label == IGNORE_INDEX else rng.randrange(10, vocab) for t, label in zip(e["input_ids"], e["labels"])
        ]
        labels = [IGNORE_INDEX if label == IGNORE_INDEX else t for t, label in zip(rejected, e["labels"])]
        pairs.append(
            {
                "chosen_input_ids": e["input_ids"],
                "chosen_labels": e["labels"],
                "rejected_input_ids": rejected,
                "rejected_labels": labels,
            }
        )
    return pairs


def dpo_part(bench: Bench) -> dict:
    """Part (e): a LoRA DPO step against supervised steps on the same pairs."""
    from rayft.config import DpoConfig
    from rayft.training.dpo import pair_loss, reference_logps
    from rayft.training.formatting import pair_batch
    from rayft.training.objectives import to_model_inputs

    pairs = preference_pairs(MICRO * (WARMUP + 2), bench.vocab)
    batches = [pairs[i : i + MICRO] for i in range(0, len(pairs), MICRO)]
    model = load(bench.model_dir, "lora")
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=LR)

    def step(loss_of, batch) -> float:
        started = time.perf_counter()
        loss_of(batch).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return time.perf_counter() - started

    def dpo(group):
        batch = pair_batch(group, bench.pad_id)
        inputs, labels = to_model_inputs(batch), torch.tensor(batch.labels)
        reference = reference_logps(model, None, inputs, labels)
        return pair_loss(model(**inputs).logits, labels, reference, DpoConfig()).loss

    def sft_rows(group):  # the same rows as DPO's batch: chosen then rejected
        return model(**step_inputs(pair_batch(group, bench.pad_id))).loss

    def sft_chosen(group):
        rows = [{"input_ids": p["chosen_input_ids"], "labels": p["chosen_labels"]} for p in group]
        return model(**step_inputs(pad_batch(rows, bench.pad_id))).loss

    sides = {"dpo": dpo, "sft_same_rows": sft_rows, "sft_chosen_rows": sft_chosen}
    times: dict[str, list[float]] = {name: [] for name in sides}
    for round_ in range(bench.sizes.rounds):
        for name in sides if round_ % 2 == 0 else reversed(sides):
            seconds = [step(sides[name], batch) for batch in batches]
            times[name] += seconds[WARMUP:]
    median = {name: statistics.median(values) for name, values in times.items()}
    return {
        "pairs_per_step": MICRO,
        "median_step_s": {name: round(value, 4) for name, value in median.items()},
        "ratio_dpo_over_sft_same_rows": round(median["dpo"] / median["sft_same_rows"], 2),
        "ratio_dpo_over_sft_per_pair": round(median["dpo"] / median["sft_chosen_rows"], 2),
    }


PARTS: dict[str, Callable[[Bench], dict | list]] = {
    "padding": padding_part,
    "overhead": overhead_part,
    "deepspeed": deepspeed_part,
    "packing": packing_part,
    "dpo": dpo_part,
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", action="append", choices=[*PARTS, "all"], help="repeatable; default: all")
    parser.add_argument(
        "--smoke", action="store_true", help="every size at its smallest (make test); numbers mean nothing"
    )
    parser.add_argument(
        "--size", choices=["test", "small", "bench"], help="model size (default bench, test with --smoke)"
    )
    parser.add_argument("--steps", type=int, help="optimizer steps per side in part (b)")
    parser.add_argument("--examples", type=int, help="examples in parts (a) and (d)")
    parser.add_argument("--methods", help="part (b) and (c) methods, comma-separated")
    parser.add_argument("--rounds", type=int, help="timed rounds per side in parts (c) and (d)")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of every side (the rayft worker "
        "gets as many CPUs); 2 uses all of this machine's cores, 1 leaves one to Ray's daemons",
    )
    parser.add_argument("--out", help="also write the JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    # setup
    args = parse_args(argv)
    defaults = SMOKE if args.smoke else FULL
    sizes = replace(
        defaults,
        model=args.size or defaults.model,
        examples=args.examples or defaults.examples,
        steps=args.steps or defaults.steps,
        rounds=args.rounds or defaults.rounds,
        methods=tuple(args.methods.split(",")) if args.methods else defaults.methods,
    )
    parts = list(PARTS) if not args.part or "all" in args.part else args.part
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rayft-bench-train-"))
    os.environ["RAYFT_HOME"] = str(work / "home")  # runs, exports and the registry stay out of the user's
    model_dir = build_tiny_model(work / "model", tokenizer_corpus(), size=sizes.model)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    bench = Bench(model_dir, work, tokenizer.pad_token_id, len(tokenizer), sizes)

    # run
    result: dict = {"model": sizes.model, "threads": args.threads, "smoke": args.smoke}
    for name in parts:
        result[name] = PARTS[name](bench)
        print(json.dumps({name: result[name]}), flush=True)

    # report
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
