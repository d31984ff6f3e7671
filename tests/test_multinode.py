"""Several Ray nodes on one machine, all storage on a real S3-protocol server (moto's standalone
server in this process): data prepare reads and writes `s3://`, training spreads its workers over
two nodes, checkpoints to `s3://` and survives losing one of those nodes mid-run; two engine replicas,
one per node, send an adapter's requests to the one that holds it, share a hot one, and survive
losing a node under load.

The head has no CPUs, so every task and training worker runs on a worker node, and each node has
its own RAYFT_HOME. Nothing is handed between nodes through a path: inputs, prepared splits,
checkpoints, exports and registered artifacts are `s3://` objects. (The base model stands in for a
hub id: a path every node has, as a cluster image would.)
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from multinode_cluster import (
    KEY,
    Load,
    engines_on_two_nodes,
    live_actors,
    live_replicas,
    lose_an_engine_node_under_load,
)

OWN_RAY_HEAD = True  # this module runs its own multi-node cluster (the session's Ray is stopped first)
pytestmark = [pytest.mark.ray, pytest.mark.multinode]


def post_chat(url: str, model: str):
    import httpx

    body = {"model": model, "messages": [{"role": "user", "content": "ticket"}], "max_tokens": 8}
    return httpx.post(f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=60)


@pytest.fixture(scope="module")
def bucket():
    from multinode_cluster import s3_bucket

    with s3_bucket() as uri:
        yield uri


@pytest.fixture(scope="module")
def nodes(bucket, tmp_path_factory):
    from multinode_cluster import local_nodes

    with local_nodes(tmp_path_factory.mktemp("node_homes")) as running:
        yield running


def prepare_options(tiny_model):
    from rayft.config import DataConfig
    from rayft.data.prepare import PrepareOptions

    return PrepareOptions(DataConfig(label_regex=r"Category:\s*(\w+)", max_tokens=256), tokenizer=tiny_model)


@pytest.fixture(scope="module")
def s3_dataset(nodes, bucket, tickets_file, tiny_model):
    """The ticket sample uploaded as a folder of two files and prepared from `s3://` to `s3://`."""
    from rayft import storage
    from rayft.data.prepare import prepare_dataset

    lines = tickets_file.read_text().splitlines(keepends=True)
    storage.write_text(f"{bucket}/raw/tickets/a.jsonl", "".join(lines[:300]))
    storage.write_text(f"{bucket}/raw/tickets/b.jsonl", "".join(lines[300:]))
    out = f"{bucket}/datasets/tickets"
    manifest = prepare_dataset([f"{bucket}/raw/tickets"], out, prepare_options(tiny_model), show_progress=False)
    return out, manifest


@pytest.mark.timeout(300)
def test_data_prepare_reads_and_writes_s3_across_nodes_with_the_local_hash(
    s3_dataset, tickets_file, tiny_model, tmp_path
):
    import json

    from rayft import storage
    from rayft.data.manifest import MANIFEST, Manifest
    from rayft.data.prepare import prepare_dataset

    out, manifest = s3_dataset
    local_inputs = tmp_path / "tickets"
    local_inputs.mkdir()
    lines = tickets_file.read_text().splitlines(keepends=True)
    (local_inputs / "a.jsonl").write_text("".join(lines[:300]))
    (local_inputs / "b.jsonl").write_text("".join(lines[300:]))
    local = prepare_dataset([str(local_inputs)], tmp_path / "out", prepare_options(tiny_model), show_progress=False)

    assert manifest.dataset_hash == local.dataset_hash and manifest.counts == local.counts
    assert manifest.counts.rejected > 0 and manifest.counts.kept > 0
    written = Manifest.model_validate_json(storage.read_text(storage.join(out, MANIFEST)))
    assert written.dataset_hash == manifest.dataset_hash
    assert manifest.inputs == [
        f"{out.rsplit('/', 2)[0]}/raw/tickets/a.jsonl",
        f"{out.rsplit('/', 2)[0]}/raw/tickets/b.jsonl",
    ]
    rejects = [json.loads(line) for line in storage.read_text(storage.join(out, "rejects.jsonl")).splitlines()]
    assert rejects and all(r["source"] in manifest.inputs and r["line"] >= 1 for r in rejects)
    for split in ("train", "val", "test"):
        assert storage.parquet_file(storage.join(out, f"{split}.parquet")).metadata.num_rows == getattr(
            manifest.counts, split
        )


@pytest.mark.timeout(300)
def test_the_multinode_bench_trains_on_one_node_and_on_two(nodes, bucket, tiny_model):
    """bench/multinode.py's training part at its smallest, on this module's nodes, before any is
    lost (the bench's node-loss part is `lose_an_engine_node_under_load`, which the engines test
    below runs): so `make test` keeps the bench from rotting without starting a second cluster."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import multinode as bench

    result = bench.training_ratio(bucket, tiny_model, rounds=1, steps=2, tickets=200)
    assert {strategy: len(speeds) for strategy, speeds in result["runs"].items()} == {"PACK": 1, "STRICT_SPREAD": 1}
    assert result["tokens_per_s_one_node"] > 0 and result["two_over_one"] > 0


def wait_for_checkpoint(runs: str, step: int, timeout: float) -> str:
    """The run folder under `runs` once Ray Train registered its checkpoint of `step` (listed in the
    checkpoint manager's snapshot: every rank's part uploaded, so a restart resumes from it)."""
    from rayft import storage

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for run in storage.list_dirs(runs):
            snapshot = storage.join(runs, run, "checkpoint_manager_snapshot.json")
            if storage.exists(snapshot) and f"step_{step:06d}" in storage.read_text(snapshot):
                return storage.join(runs, run)
        time.sleep(0.2)
    raise TimeoutError(f"no registered checkpoint of step {step} in {runs} within {timeout} s")


@pytest.mark.timeout(420)
@pytest.mark.parametrize("zero_stage, lose_a_node", [(3, True)])
def test_training_spread_over_two_nodes_checkpoints_to_s3_survives_losing_one_and_registers_from_s3(
    nodes, bucket, s3_dataset, tiny_model, zero_stage, lose_a_node
):
    """Each rank uploads its own part of every checkpoint (ZeRO-3: its shard of the parameters too);
    with a node lost (ZeRO-3, whose restart must gather every rank's shard), the restarted group on
    a new node reads them all back from s3://. ZeRO-2 across two nodes, its checkpoint and export on
    s3:// and its version registered, runs in the multi-node bench's STRICT_SPREAD run above (its
    resume is `test_training.py`'s); add `(2, False)` to run these checks on it too (40 s)."""
    import json

    from conftest import lora_train_config

    from rayft import storage
    from rayft.config import parse_config
    from rayft.registry import verified_artifact
    from rayft.storage import content_hash
    from rayft.training.trainer import train

    dataset, _ = s3_dataset
    steps = 12 if lose_a_node else 6
    config = lora_train_config(
        tiny_model,
        dataset,
        f"spread-z{zero_stage}",
        deepspeed={"zero_stage": zero_stage},
        max_steps=steps,
        checkpoint_every=3,
        eval_every=6,
        placement_strategy="STRICT_SPREAD",
        max_failures=2,
        storage_path=f"{bucket}/runs",
        export_path=f"{bucket}/models",
    )
    config["data"]["out"] = dataset
    with ThreadPoolExecutor(1) as pool:
        run = pool.submit(train, parse_config(config), show_progress=False)
        run_dir = wait_for_checkpoint(f"{bucket}/runs/spread-z{zero_stage}", step=3, timeout=240)
        placed = set(live_actors("RayTrainWorker").values())
        assert len(placed) == 2  # STRICT_SPREAD: one worker per node
        if lose_a_node:
            nodes.kill(next(n for n in nodes.workers if n.node_id in placed))  # a worker's node dies mid-run...
            nodes.add_worker()  # ...and a new node joins (Ray starts nodes from the main thread only)
        version = run.result(timeout=300)

    log = [json.loads(line) for line in storage.read_text(storage.join(run_dir, "metrics.jsonl")).splitlines()]
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert len(resumed) == int(lose_a_node) and all(r["from_step"] >= 3 for r in resumed)
    assert [r["step"] for r in log if "loss" in r] == list(range(1, steps + 1))  # no step lost or counted twice
    assert version.metrics["restarts"] == int(lose_a_node) and version.metrics["run_dir"] == run_dir
    assert version.artifact_uri.startswith(f"{bucket}/models/spread-z{zero_stage}/")
    assert content_hash(version.artifact_uri) == version.weights_hash
    assert verified_artifact(version).is_dir()  # downloaded from s3:// and checked


def registered_adapter(bucket: str, base: str, name: str, seed: int, tmp_path):
    """A random adapter of `base` uploaded to `s3://` and registered as `name`."""
    from rayft import storage
    from rayft.registry import Registry
    from rayft.tiny import random_adapter

    uri = storage.upload_dir(random_adapter(base, tmp_path / name, seed=seed), f"{bucket}/models/{name}/1")
    return Registry().register(name, "adapter", base, uri)


def nodes_holding(nodes, version) -> int:
    """How many nodes fetched the adapter into their cache: an engine fetches it from s3:// (checked
    against the registered hash) the first time it loads it, and there is one engine per node."""
    return len(list(nodes.homes.glob(f"node*/cache/artifacts/{version.weights_hash}")))


@pytest.fixture(scope="module")
def engines(nodes, tiny_model):
    """`rayft serve` with one engine replica on each worker node, started once for the tests below;
    a worker node lost meanwhile is replaced once it has stopped."""
    try:
        with engines_on_two_nodes(nodes, tiny_model) as url:
            assert len(set(live_replicas("engine").values())) == 2  # one engine on each worker node
            yield url
    finally:
        if len(nodes.workers) < 2:
            nodes.add_worker()


@pytest.mark.vllm
@pytest.mark.timeout(240)
def test_engines_route_an_adapters_requests_to_the_one_that_holds_it(nodes, bucket, tiny_model, engines, tmp_path):
    """The engine router (`adapter_router.py`) sends a cold adapter's first request to one engine and
    every later one to that engine: 20 requests, one after another, and the adapter was fetched (so
    loaded) on one node only. Serve's default router spreads them over both engines, each loading it."""
    version = registered_adapter(bucket, tiny_model, "resident", seed=6, tmp_path=tmp_path)
    assert [post_chat(engines, version.ref).status_code for _ in range(20)] == [200] * 20
    assert nodes_holding(nodes, version) == 1


@pytest.mark.vllm
@pytest.mark.timeout(480)
def test_engines_on_two_nodes_fetch_a_hot_adapter_from_s3_and_survive_losing_a_node_under_load(
    nodes, bucket, tiny_model, engines, tmp_path
):
    from rayft.serving.adapter_router import HOT_QUEUE_LEN

    version = registered_adapter(bucket, tiny_model, "remote", seed=5, tmp_path=tmp_path)
    # More requests at once than the router's hot threshold (adapter_router.HOT_QUEUE_LEN): the
    # adapter spreads to the second engine, and each fetches it from s3:// into its own node's
    # cache, checked against the registered hash.
    with Load(engines, version.ref, KEY, threads=HOT_QUEUE_LEN + 4) as load:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and nodes_holding(nodes, version) < 2:
            time.sleep(0.5)
    assert nodes_holding(nodes, version) == 2 and set(load.statuses()) == {200}

    load, killed = lose_an_engine_node_under_load(nodes, engines, version.ref)
    assert set(load.statuses()) <= {200, 503}  # no 500, no hang
    assert all(retry for _, status, retry in load.results if status == 503)
    assert 200 in load.statuses(after=killed)  # answered through the loss, not only before it
    settled = [post_chat(engines, version.ref).status_code for _ in range(8)]
    assert settled == [200] * 8  # then the engine left serves everything
