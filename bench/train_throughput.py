"""Benchmark training throughput on this machine's CPU, every ratio measured side by side in one run.

Run: `.venv/bin/python bench/train_throughput.py [--size bench] [--steps 14] [--parts a,b,c]` (JSON on stdout;
record it in bench/RESULTS.md). Both parts use a tiny Llama built offline (`rayft.tiny`, size
`bench`: hidden 512, 8 layers, 8 heads, ~27M parameters) in fp32.

(a) packing: the same examples, in the same order, trained (full fine-tuning, AdamW) as padded
    micro-batches and as packed rows (`rayft.training.formatting`, the worker's own inputs with
    `use_cache=False`). Lengths are skewed like real chat data: most examples short, a few long.
    Reported: real (non-padding) tokens per second of each, and the ratio (goal >= 2x).
(b) overhead: `rayft train` with one worker (Ray Train, DeepSpeed without ZeRO, Ray Data shard) against
    a plain single-process torch loop on the same model, data, batch, optimizer, schedule and
    step count, run before and after it (A-B-A, Ray stopped for both). Every example is truncated
    to the same length, so every step carries the same tokens and step times compare directly.
    Reported: steady-state tokens/s of each (the first WARMUP steps of each left out), the ratio
    of rayft to the plain runs' mean (goal >= 0.9x), and each side's wall time (rayft's includes
    worker start-up, tokenizing on Ray Data, the checkpoint and the export).
(c) DeepSpeed alone: the plain step against a step through rayft's own DeepSpeed engine
    (`build_engine` with the config one worker gets: no ZeRO, see `deepspeed_config.zero_stage`),
    and against the same engine under ZeRO-2 (what one worker ran before), world size 1 on gloo,
    no Ray, in one process, alternating rounds of ROUND steps, so the machine's drift hits every
    side alike. Reported: median step seconds of each phase (forward, backward, optimizer step)
    and each engine's ratio of total step times to the plain step's. Together with (b) it tells
    DeepSpeed's share of the overhead from Ray's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

from rayft.data.samples import tokenizer_corpus
from rayft.tiny import build_tiny_model
from rayft.training.formatting import IGNORE_INDEX, pack_examples, packed_batch, pad_batch, tokenize_conversation
from rayft.training.worker import to_model_inputs

WARMUP = 2
ROUND = 4  # steps per side per round in part (c)


def load(model_dir: Path, method: str = "full"):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, attn_implementation="sdpa")
    model.config.use_cache = False
    if method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model, LoraConfig(r=16, lora_alpha=32, lora_dropout=0.0, target_modules="all-linear", task_type="CAUSAL_LM")
        )
    return model.train()


def skewed_examples(n: int, vocab: int, seed: int = 0) -> list[dict]:
    """Token rows: 85% short (24-96 tokens), 15% long (256-512); the second half of each is learned."""
    rng = random.Random(seed)
    examples = []
    for _ in range(n):
        length = rng.randint(256, 512) if rng.random() < 0.15 else rng.randint(24, 96)
        ids = [rng.randrange(10, vocab) for _ in range(length)]
        examples.append({"input_ids": ids, "labels": [IGNORE_INDEX] * (length // 2) + ids[length // 2 :]})
    return examples


def timed_steps(model, batches, pad_id: int, lr: float = 1e-4) -> list[tuple[float, int]]:
    """Train on `batches` as a plain loop (AdamW, cosine schedule, clipping): (seconds, real tokens)
    of each optimizer step."""
    from transformers import get_scheduler

    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    scheduler = get_scheduler("cosine", optimizer, num_warmup_steps=0, num_training_steps=len(batches))
    out = []
    for batch in batches:
        started = time.perf_counter()
        loss = model(**to_model_inputs(batch)).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        out.append((time.perf_counter() - started, sum(1 for row in batch.input_ids for t in row if t != pad_id)))
    return out


def rate(steps: list[tuple[float, int]]) -> float:
    kept = steps[WARMUP:]
    return sum(n for _, n in kept) / sum(s for s, _ in kept)


def bench_packing(model_dir: Path, n_examples: int, micro: int, max_seq_len: int, pad_id: int, vocab: int) -> dict:
    examples = skewed_examples(n_examples, vocab)
    padded = [pad_batch(examples[i : i + micro], pad_id) for i in range(0, len(examples), micro)]
    rows = pack_examples(examples, max_seq_len)
    packed = [packed_batch(rows[i : i + 2], pad_id) for i in range(0, len(rows), 2)]
    results = {}
    for name, batches in (("padded", padded), ("packed", packed)):
        torch.manual_seed(0)
        steps = timed_steps(load(model_dir), batches, pad_id)
        cells = sum(len(row) for b in batches for row in b.input_ids)
        results[name] = {
            "steps": len(steps),
            "tokens_per_s": round(rate(steps), 1),
            "padding_fraction": round(1 - sum(n for _, n in steps) / cells, 3),
        }
    results["speedup"] = round(results["packed"]["tokens_per_s"] / results["padded"]["tokens_per_s"], 2)
    results["examples"] = n_examples
    results["mean_tokens"] = round(sum(len(e["input_ids"]) for e in examples) / n_examples, 1)
    return results


def uniform_dataset(folder: Path, n: int, seed: int = 0) -> Path:
    """A prepared-dataset folder (train.parquet only) of chats longer than the sequence limit, so
    every tokenized example is exactly max_seq_len tokens with labels in it."""
    rng = random.Random(seed)
    words = " ".join(tokenizer_corpus()).split()
    records = [
        [
            {"role": "user", "content": " ".join(rng.choices(words, k=12))},
            {"role": "assistant", "content": " ".join(rng.choices(words, k=600))},
        ]
        for _ in range(n)
    ]
    folder.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"messages": records}).to_parquet(folder / "train.parquet")
    return folder


def plain_loop(
    model_dir: Path, dataset: Path, method: str, steps: int, batch: int, max_seq_len: int, lr: float
) -> dict:
    """The baseline: one process, the same tokenization, model, AdamW, schedule and clipping."""
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    conversations = pd.read_parquet(dataset / "train.parquet")["messages"]
    examples = [tokenize_conversation(tokenizer, [dict(m) for m in c], max_seq_len) for c in conversations]
    batches = [pad_batch(examples[i * batch : (i + 1) * batch], tokenizer.pad_token_id) for i in range(steps)]
    torch.manual_seed(0)
    timings = timed_steps(load(model_dir, method), batches, tokenizer.pad_token_id, lr)
    return {"tokens_per_s": round(rate(timings), 1), "wall_s": round(time.perf_counter() - started, 1)}


def rayft_run(model_dir: Path, dataset: Path, method: str, steps: int, batch: int, max_seq_len: int, lr: float) -> dict:
    """`rayft train` with one worker given as many CPUs as the plain loop has torch threads; step times
    from its per-step log."""
    from rayft.config import parse_config
    from rayft.training.trainer import train

    config = parse_config(
        {
            "name": f"bench-{method}",
            "model": {"base": str(model_dir)},
            "train": {
                "dataset": str(dataset),
                "method": method,
                "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
                "num_workers": 1,
                "cpus_per_worker": torch.get_num_threads(),
                "epochs": 1,
                "max_steps": steps,
                "batch_size": batch,
                "learning_rate": lr,
                "warmup_ratio": 0.0,
                "max_seq_len": max_seq_len,
                "checkpoint_every": steps,
                "eval_every": steps,
            },
        }
    )
    started = time.perf_counter()
    version = train(config, show_progress=False)
    wall = time.perf_counter() - started
    run_log = Path(version.metrics["run_dir"]) / "metrics.jsonl"
    log = [json.loads(line) for line in run_log.read_text().splitlines()]
    tokens = batch * max_seq_len
    timings = [(tokens / r["tokens_per_s"], tokens) for r in log if "loss" in r]
    assert len(timings) == steps, f"expected {steps} logged steps, got {len(timings)}"
    return {"tokens_per_s": round(rate(timings), 1), "wall_s": round(wall, 1)}


def bench_overhead(model_dir: Path, work: Path, method: str, steps: int) -> dict:
    """Plain loop, rayft, plain loop again (A-B-A): this machine's speed drifts by 10-20% within
    minutes (shared cores), so rayft is compared with the mean of the plain runs on either side.
    Both plain runs see no Ray processes: Ray's own daemons count against rayft."""
    import ray

    from rayft.runtime import ensure_ray

    batch, max_seq_len, lr = 8, 256, 1e-4
    dataset = uniform_dataset(work / "uniform", steps * batch)
    before = plain_loop(model_dir, dataset, method, steps, batch, max_seq_len, lr)
    ensure_ray()  # started outside the timed run, as a cluster would be
    ours = rayft_run(model_dir, dataset, method, steps, batch, max_seq_len, lr)
    ray.shutdown()
    after = plain_loop(model_dir, dataset, method, steps, batch, max_seq_len, lr)
    plain = (before["tokens_per_s"] + after["tokens_per_s"]) / 2
    return {
        "method": method,
        "steps": steps,
        "batch": batch,
        "max_seq_len": max_seq_len,
        "plain_before": before,
        "rayft": ours,
        "plain_after": after,
        "ratio": round(ours["tokens_per_s"] / plain, 3),
    }


def phase_times(forward, backward, step, batch) -> tuple[float, float, float]:
    started = time.perf_counter()
    loss = forward(**to_model_inputs(batch)).loss
    forwarded = time.perf_counter()
    backward(loss)
    backwarded = time.perf_counter()
    step()
    return forwarded - started, backwarded - forwarded, time.perf_counter() - backwarded


def plain_stepper(model_dir: Path, method: str, lr: float):
    model = load(model_dir, method)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)

    def step() -> None:
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return lambda batch: phase_times(model, lambda loss: loss.backward(), step, batch)


def deepspeed_stepper(model_dir: Path, method: str, lr: float, micro: int, override: dict | None = None):
    """Steps through rayft's engine as one worker builds it (`override`: raw DeepSpeed config on top)."""
    from rayft.config import TrainConfig
    from rayft.training.deepspeed_config import deepspeed_config
    from rayft.training.model import build_engine

    train = TrainConfig.model_validate(
        {
            "method": method,
            "learning_rate": lr,
            "num_workers": 1,
            "deepspeed": {"zero_stage": 2, "override": override},
            "lora": {"r": 16, "alpha": 32, "dropout": 0.0},
        }
    )
    engine, _ = build_engine(load(model_dir, method), train, deepspeed_config(train, micro, False), lr, 0, 1000)
    return lambda batch: phase_times(engine, engine.backward, engine.step, batch)


def bench_deepspeed(model_dir: Path, work: Path, method: str, rounds: int) -> dict:
    """Part (c): plain and DeepSpeed steps alternating in one process (gloo, world size 1, set up
    once by `main`)."""
    import statistics

    from transformers import AutoTokenizer

    batch, max_seq_len, lr = 8, 256, 1e-4
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    dataset = uniform_dataset(work / "uniform-c", ROUND * batch)
    examples = [
        tokenize_conversation(tokenizer, [dict(m) for m in c], max_seq_len)
        for c in pd.read_parquet(dataset / "train.parquet")["messages"]
    ]
    batches = [pad_batch(examples[i * batch : (i + 1) * batch], tokenizer.pad_token_id) for i in range(ROUND)]
    torch.manual_seed(0)
    sides = {
        "plain": plain_stepper(model_dir, method, lr),
        "deepspeed": deepspeed_stepper(model_dir, method, lr, batch),
        "deepspeed_zero2": deepspeed_stepper(model_dir, method, lr, batch, {"zero_optimization": {"stage": 2}}),
    }
    times: dict[str, list] = {name: [] for name in sides}
    for _ in range(rounds + 1):  # the first round warms both up and is left out
        for name, run in sides.items():
            times[name].append([run(b) for b in batches])
    medians = {
        name: [statistics.median(t[i] for r in rounds_[1:] for t in r) for i in range(3)]
        for name, rounds_ in times.items()
    }
    return {
        "method": method,
        "rounds": rounds,
        "steps_per_round": ROUND,
        "median_s": {
            name: dict(zip(("forward", "backward", "step"), (round(v, 3) for v in m))) for name, m in medians.items()
        },
        "ratio": round(sum(medians["plain"]) / sum(medians["deepspeed"]), 3),
        "ratio_zero2": round(sum(medians["plain"]) / sum(medians["deepspeed_zero2"]), 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size", default="bench", choices=["small", "bench"])
    parser.add_argument("--steps", type=int, default=14, help="optimizer steps per side in part (b)")
    parser.add_argument("--examples", type=int, default=192, help="examples in part (a)")
    parser.add_argument("--methods", default="lora,full", help="part (b) and (c) methods, comma-separated")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side in part (c)")
    parser.add_argument("--parts", default="a,b,c", help="which parts to run, comma-separated")
    parser.add_argument(
        "--threads",
        type=int,
        default=2,
        help="torch threads of every side (the rayft worker "
        "gets as many CPUs); 2 uses all of this machine's cores, 1 leaves one to Ray's daemons",
    )
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    work = Path(tempfile.mkdtemp(prefix="rayft-bench-train-"))
    os.environ["RAYFT_HOME"] = str(work / "home")  # runs, exports and the registry stay out of the user's
    model_dir = build_tiny_model(work / "model", tokenizer_corpus(), size=args.size)
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    parts, methods = args.parts.split(","), args.methods.split(",")
    result = {"model": args.size, "threads": args.threads}
    if "a" in parts:
        result["packing"] = bench_packing(model_dir, args.examples, 8, 512, tokenizer.pad_token_id, len(tokenizer))
        print(json.dumps(result["packing"]), flush=True)
    if "b" in parts:
        result["overhead"] = [bench_overhead(model_dir, work, m, args.steps) for m in methods]
    if "c" in parts:
        import torch.distributed as dist

        os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29531", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
        dist.init_process_group("gloo")
        result["deepspeed_alone"] = [bench_deepspeed(model_dir, work, m, args.rounds) for m in methods]
        dist.destroy_process_group()
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
