"""Benchmark rayft across Ray nodes on one machine, side by side in one run; storage on an
S3-protocol server (tests/multinode_cluster.py: a head without CPUs, 2-CPU worker nodes, moto).

Run: `.venv/bin/python bench/multinode.py [--rounds 2] [--steps 12] [--out FILE]` (JSON on stdout and
in FILE; record it in bench/RESULTS.md). `--smoke`: one round of 2 steps on a smaller sample, a
shorter load after the kill; the same code (`make test` runs it; its numbers mean nothing).

(a) training: the same LoRA run (2 workers, ZeRO-2, the support-ticket sample prepared on `s3://`,
    checkpoints and exports on `s3://`) with both workers on one node (`PACK`) and on two nodes
    (`STRICT_SPREAD`), alternating A-B per round so the machine's drift hits both alike. Reported:
    mean training tokens/s of each (the workers' own step log) and the ratio two nodes / one node.
    On one machine the ratio prices Ray's cross-node path (object transfers between raylets, gloo
    over TCP between nodes) and not a network's bandwidth.
(b) losing a node: two engine replicas, one per worker node; under 4 concurrent clients the node of
    the engine that is not the ingress's is killed. Reported: seconds from the kill to the first
    request started after it that succeeded, and to the last failed one (after which all succeed).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from multinode_cluster import engines_on_two_nodes, local_nodes, lose_an_engine_node_under_load, s3_bucket  # noqa: E402


def training_ratio(bucket: str, base: str, rounds: int, steps: int, tickets: int) -> dict:
    from rayft.config import DataConfig, parse_config
    from rayft.data.prepare import PrepareOptions, prepare_dataset
    from rayft.data.samples import write_support_tickets
    from rayft.training.trainer import train

    with tempfile.TemporaryDirectory() as scratch:
        sample = write_support_tickets(Path(scratch) / "tickets.jsonl", n=tickets, seed=3)
        dataset = f"{bucket}/datasets/tickets"
        options = PrepareOptions(DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=256), tokenizer=base)
        prepare_dataset([str(sample)], dataset, options, show_progress=False)
    speeds: dict[str, list[float]] = {"PACK": [], "STRICT_SPREAD": []}
    for round_ in range(rounds):
        for strategy in speeds:
            settings = {
                "method": "lora",
                "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
                "num_workers": 2,
                "epochs": 1,
                "max_steps": steps,
                "batch_size": 8,
                "max_seq_len": 256,
                "eval_every": steps,
                "checkpoint_every": steps,
                "placement_strategy": strategy,
                "storage_path": f"{bucket}/runs",
                "export_path": f"{bucket}/models",
            }
            name = f"bench-{strategy.lower().replace('_', '-')}-{round_}"
            config = {"name": name, "model": {"base": base}, "data": {"out": dataset}, "train": settings}
            version = train(parse_config(config), show_progress=False)
            speeds[strategy].append(version.metrics["tokens_per_s"])
            print(f"{strategy}: {speeds[strategy][-1]:.0f} tokens/s", file=sys.stderr)
    one, two = (sum(v) / len(v) for v in speeds.values())
    return {"tokens_per_s_one_node": one, "tokens_per_s_two_nodes": two, "two_over_one": two / one, "runs": speeds}


def node_loss(nodes, bucket: str, base: str, seconds: float) -> dict:
    from rayft import storage
    from rayft.registry import Registry
    from rayft.tiny import random_adapter

    with tempfile.TemporaryDirectory() as scratch:
        uri = storage.upload_dir(random_adapter(base, Path(scratch) / "a", seed=5), f"{bucket}/models/remote/1")
    version = Registry().register("remote", "adapter", base, uri)
    with engines_on_two_nodes(nodes, base) as url:
        load, killed = lose_an_engine_node_under_load(nodes, url, version.ref, seconds=seconds)
    after = [(started - killed, status) for started, status, _ in sorted(load.results) if started > killed]
    failed = [t for t, status in after if status != 200]
    return {
        "first_success_after_kill_s": min(t for t, status in after if status == 200),
        "last_failure_after_kill_s": max(failed, default=0.0),
        "statuses": {str(s): sum(1 for _, x, _ in load.results if x == s) for s in {x for _, x, _ in load.results}},
    }


def main() -> None:
    import os

    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, help="default 2, 1 with --smoke")
    parser.add_argument("--steps", type=int, help="default 12, 2 with --smoke")
    parser.add_argument("--smoke", action="store_true", help="the smallest run of the same code (make test)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    rounds = args.rounds or (1 if args.smoke else 2)
    steps = args.steps or (2 if args.smoke else 12)
    tickets, load_seconds = (200, 5.0) if args.smoke else (600, 20.0)
    from rayft.data.samples import tokenizer_corpus
    from rayft.tiny import build_tiny_model

    os.environ["RAYFT_QUIET"] = "1"  # workers' output stays in Ray's logs: stdout is the JSON
    with tempfile.TemporaryDirectory() as scratch:
        os.environ["RAYFT_HOME"] = str(Path(scratch) / "home")
        base = str(build_tiny_model(Path(scratch) / "tiny", tokenizer_corpus(), size="test"))
        started = time.time()
        with s3_bucket() as bucket:
            homes = Path(scratch) / "nodes"
            homes.mkdir()
            with local_nodes(homes) as nodes:
                results = {"training": training_ratio(bucket, base, rounds, steps, tickets)}
                results["node_loss"] = node_loss(nodes, bucket, base, load_seconds)
        results["wall_s"] = time.time() - started
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
