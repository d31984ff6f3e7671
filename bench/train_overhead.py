"""Parts (b) and (c) of train_throughput.py (its docstring says what they measure): rayft's trainer,
and rayft's DeepSpeed engine alone, against the plain loop."""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import time
from pathlib import Path

import pandas as pd
import torch
from train_loop import LR, Bench, load, rate, step_inputs, timed_steps

from rayft.data.samples import tokenizer_corpus
from rayft.training.formatting import pad_batch, tokenize_conversation

ROUND = 4  # steps per side per round in part (c)


def uniform_chats(n: int, seed: int = 0) -> list[list[dict]]:
    """Chats of random corpus words, each longer than parts (b) and (c)'s 256-token limit."""
    rng = random.Random(seed)
    words = " ".join(tokenizer_corpus()).split()
    return [
        [
            {"role": "user", "content": " ".join(rng.choices(words, k=12))},
            {"role": "assistant", "content": " ".join(rng.choices(words, k=600))},
        ]
        for _ in range(n)
    ]


def uniform_dataset(model_dir: Path, folder: Path, n: int, seed: int = 0) -> Path:
    """`n` chats longer than the sequence limit prepared by `rayft data prepare` (all in the train
    split), so every tokenized example is exactly max_seq_len tokens with labels in it."""
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions, prepare_dataset

    folder.mkdir(parents=True, exist_ok=True)
    with (folder / "uniform.jsonl").open("w") as out:
        out.writelines(json.dumps({"messages": chat}) + "\n" for chat in uniform_chats(n, seed))
    data = DataConfig(split={"train": 1.0, "val": 0.0, "test": 0.0}, warn_min_records=0)
    options = PrepareOptions(data, tokenizer=str(model_dir))
    manifest = prepare_dataset([str(folder / "uniform.jsonl")], folder / "uniform", options, show_progress=False)
    if manifest.counts.train < n:
        raise RuntimeError(f"data prepare kept {manifest.counts.train} of {n} uniform chats: {manifest.counts}")
    return folder / "uniform"


def uniform_batches(tokenizer, dataset: Path, steps: int, batch: int, max_seq_len: int) -> list:
    """The plain loop's batches: the prepared train split tokenized as the worker tokenizes it."""
    conversations = pd.read_parquet(dataset / "train.parquet")["messages"]
    examples = [tokenize_conversation(tokenizer, [dict(m) for m in c], max_seq_len) for c in conversations]
    return [pad_batch(examples[i * batch : (i + 1) * batch], tokenizer.pad_token_id) for i in range(steps)]


def plain_loop(
    model_dir: Path, dataset: Path, method: str, steps: int, batch: int, max_seq_len: int, lr: float
) -> dict:
    """The baseline: one process, the same tokenization, model, AdamW, schedule and clipping."""
    from transformers import AutoTokenizer

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    batches = uniform_batches(tokenizer, dataset, steps, batch, max_seq_len)
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
    if len(timings) != steps:
        raise RuntimeError(f"expected {steps} logged steps, got {len(timings)}")
    return {"tokens_per_s": round(rate(timings), 1), "wall_s": round(wall, 1)}


def overhead_part(bench: Bench) -> list[dict]:
    """Part (b), per method: plain loop, rayft, plain loop again (A-B-A). This machine's speed drifts
    by 10-20% within minutes (shared cores), so rayft is compared with the mean of the plain runs
    on either side. Both plain runs see no Ray processes: Ray's own daemons count against rayft."""
    import ray

    from rayft.runtime import ensure_ray

    batch, max_seq_len, steps = 8, 256, bench.sizes.steps
    dataset = uniform_dataset(bench.model_dir, bench.work / "uniform-b", steps * batch)
    ray.shutdown()  # data prepare started it
    results = []
    for method in bench.sizes.methods:
        before = plain_loop(bench.model_dir, dataset, method, steps, batch, max_seq_len, LR)
        ensure_ray()  # started outside the timed run, as a cluster would be
        ours = rayft_run(bench.model_dir, dataset, method, steps, batch, max_seq_len, LR)
        ray.shutdown()
        after = plain_loop(bench.model_dir, dataset, method, steps, batch, max_seq_len, LR)
        plain = (before["tokens_per_s"] + after["tokens_per_s"]) / 2
        results.append(
            {
                "method": method,
                "steps": steps,
                "batch": batch,
                "max_seq_len": max_seq_len,
                "plain_before": before,
                "rayft": ours,
                "plain_after": after,
                "ratio": round(ours["tokens_per_s"] / plain, 3),
            }
        )
    return results


def phase_times(forward, backward, step, batch) -> tuple[float, float, float]:
    started = time.perf_counter()
    loss = forward(**step_inputs(batch)).loss
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


@contextlib.contextmanager
def gloo_world_of_one():
    """torch.distributed on gloo, world size 1, as one DeepSpeed worker; the environment it needs is
    taken away afterwards (accelerate, in part (d), would read it as a distributed run)."""
    import torch.distributed as dist

    env = {"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "29531", "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    dist.init_process_group("gloo")
    try:
        yield
    finally:
        dist.destroy_process_group()
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def deepspeed_method(bench: Bench, method: str) -> dict:
    """Part (c) for one method: plain and DeepSpeed steps alternating in one process."""
    from transformers import AutoTokenizer

    batch, max_seq_len, rounds = 8, 256, bench.sizes.rounds
    tokenizer = AutoTokenizer.from_pretrained(bench.model_dir)
    examples = [tokenize_conversation(tokenizer, chat, max_seq_len) for chat in uniform_chats(ROUND * batch)]
    batches = [pad_batch(examples[i * batch : (i + 1) * batch], tokenizer.pad_token_id) for i in range(ROUND)]
    torch.manual_seed(0)
    sides = {
        "plain": plain_stepper(bench.model_dir, method, LR),
        "deepspeed": deepspeed_stepper(bench.model_dir, method, LR, batch),
        "deepspeed_zero2": deepspeed_stepper(bench.model_dir, method, LR, batch, {"zero_optimization": {"stage": 2}}),
    }
    times: dict[str, list] = {name: [] for name in sides}
    for _ in range(rounds + 1):  # the first round warms every side up and is left out
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


def deepspeed_part(bench: Bench) -> list[dict]:
    """Part (c), per method (gloo, world size 1, no Ray)."""
    with gloo_world_of_one():
        return [deepspeed_method(bench, method) for method in bench.sizes.methods]
