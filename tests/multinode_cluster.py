"""A multi-node Ray cluster and an S3-protocol server on one machine, for tests/test_multinode.py and
bench/multinode.py.

`s3_bucket()`: moto's standalone S3 server in a subprocess, one bucket, and the environment rayft
(pyarrow) and boto3 read to reach it (`AWS_ENDPOINT_URL` and credentials), as they would reach MinIO.
`local_nodes()`: a Ray head without CPUs and worker nodes of 2 CPUs, each with its own RAYFT_HOME, joined
by this process as `rayft` joins a cluster (`RAY_ADDRESS`); started after `s3_bucket()`, every node
inherits the storage environment.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from serve_process import free_port

S3_ENV = {"AWS_ACCESS_KEY_ID": "rayft-test", "AWS_SECRET_ACCESS_KEY": "rayft-test", "AWS_DEFAULT_REGION": "us-east-1"}


@contextmanager
def environment(values: dict[str, str]):
    """os.environ with `values` set, restored afterwards."""
    saved = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in saved.items():
            os.environ.pop(key, None) if value is None else os.environ.__setitem__(key, value)


@contextmanager
def s3_bucket(name: str = "rayft-multinode", log: Path | None = None):
    """Yields `s3://<name>` on a fresh S3-protocol server: moto's, in its own process (its web app's
    Flask, imported into this process, would break vLLM engines that later start here), logging to
    `log` (default: nowhere)."""
    import boto3

    port = free_port()
    with open(log or os.devnull, "ab") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=out
        )
    try:
        wait_for_port(port, server, timeout=60)
        with environment(S3_ENV | {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}"}):
            boto3.client("s3").create_bucket(Bucket=name)
            yield f"s3://{name}"
    finally:
        server.kill()
        server.wait()


def wait_for_port(port: int, process: subprocess.Popen, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the S3 server exited with {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.2)
    raise TimeoutError(f"the S3 server did not listen on {port} within {timeout} s")


class Nodes:
    """The running cluster: `cluster` (ray.cluster_utils.Cluster), each worker node's `homes`."""

    def __init__(self, cluster, homes: Path):
        self.cluster, self.homes = cluster, homes

    @property
    def workers(self) -> list:
        return sorted(self.cluster.worker_nodes, key=lambda node: node.node_id)

    def add_worker(self, cpus: int = 2):
        home = self.homes / f"node{len(list(self.homes.glob('node*')))}"
        home.mkdir()
        return self.cluster.add_node(num_cpus=cpus, env_vars={"RAYFT_HOME": str(home)})

    def kill(self, node) -> None:
        """The node's raylet and every process on it are killed, as when a machine dies."""
        self.cluster.remove_node(node, allow_graceful=False)


@contextmanager
def local_nodes(homes: Path, workers: int = 2, cpus: int = 2):
    import ray
    from ray.cluster_utils import Cluster
    from session_ray import stop_session_ray

    from rayft.runtime import ensure_ray

    stop_session_ray()
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "include_dashboard": False, "env_vars": {"RAYFT_HOME": str(homes / "head")}},
    )
    running = Nodes(cluster, homes)
    try:
        for _ in range(workers):
            running.add_worker(cpus)
        cluster.wait_for_nodes()
        with environment({"RAY_ADDRESS": cluster.address}):
            ensure_ray()
            yield running
            ray.shutdown()
    finally:
        cluster.shutdown()


def live_actors(class_name: str, name_prefix: str = "") -> dict[str, str]:
    """Actor id -> node id of the live actors of a class (and a name prefix)."""
    import ray

    return {
        actor_id: actor["Address"]["NodeID"]
        for actor_id, actor in ray._private.state.actors().items()
        if actor["ActorClassName"] == class_name and actor["Name"].startswith(name_prefix) and actor["State"] == "ALIVE"
    }


def live_replicas(deployment: str) -> dict[str, str]:
    """Actor id -> node id of the live Serve replicas of one deployment of the rayft app."""
    return live_actors("ServeReplica:rayft:" + deployment)


class Load:
    """Chat requests for `model` from a few threads until the block ends: (start time, status,
    Retry-After) of each."""

    def __init__(self, url: str, model: str, key: str, threads: int = 4):
        self.url, self.model, self.key = url, model, key
        self.results: list[tuple[float, int, str | None]] = []
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(threads)]

    def run(self, seed: int) -> None:
        import httpx

        n = 0
        while not self.stop.is_set():
            n += 1
            body = {
                "model": self.model,
                "messages": [{"role": "user", "content": f"ticket {seed}-{n}"}],
                "max_tokens": 8,
            }
            started = time.monotonic()
            response = httpx.post(
                f"{self.url}/v1/chat/completions",
                json=body,
                headers={"Authorization": f"Bearer {self.key}"},
                timeout=60,
            )
            self.results.append((started, response.status_code, response.headers.get("retry-after")))

    def statuses(self, after: float = 0.0) -> list[int]:
        return [status for started, status, _ in self.results if started > after]

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=90)


KEY = "multinode-key"


@contextmanager
def engines_on_two_nodes(nodes: Nodes, base: str):
    """`rayft serve` for `base` with two engine replicas, one per worker node, behind API key KEY;
    yields its URL. One HTTP proxy, on the head: every node of a one-machine cluster has the same IP."""
    from ray import serve

    from rayft.config import parse_config
    from rayft.serving import app

    port = free_port()
    serve.start(proxy_location="HeadOnly", http_options={"host": "127.0.0.1", "port": port})
    settings = {"port": port, "min_replicas": 2, "max_replicas": 2, "max_engines_per_node": 1, "max_model_len": 256}
    config = parse_config({"name": "multinode", "model": {"base": base}, "serve": settings | {"api_keys": [KEY]}})
    try:
        yield app.start(config)
    finally:
        app.shutdown()


def lose_an_engine_node_under_load(nodes: Nodes, url: str, model: str, seconds: float = 10) -> tuple[Load, float]:
    """Kill the worker node of an engine that is not the ingress's while requests for `model` run;
    returns the load (its results) and when the node was killed (time.monotonic())."""
    engines = set(live_replicas("engine").values())
    ingress = set(live_replicas("openai").values())
    victim = next(node for node in nodes.workers if node.node_id in engines - ingress)
    with Load(url, model, KEY) as load:
        time.sleep(2)
        killed = time.monotonic()
        nodes.kill(victim)
        time.sleep(seconds)
    return load, killed
