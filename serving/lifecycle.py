"""`rayft serve CONFIG` as a process: start, say where, run until told to stop, drain, exit 0.

SIGTERM (how Kubernetes stops a pod) and SIGINT (Ctrl-C, which a terminal sends to the whole
process group; Ray's own processes block it) both start a drain (`drain.py`): every ingress replica
answers new requests with 503 and Retry-After, the requests in flight get up to
`serve.shutdown_grace_s` to finish, then Serve and the process's Ray stop and the process exits 0
with one line saying how it ended. Ray's driver would otherwise turn SIGTERM into an abrupt exit.
"""

from __future__ import annotations

import signal
import threading
import time

from rayft.config import RayftConfig
from rayft.registry import Registry
from rayft.serving.app import APP_NAME, reservations, served_base, shutdown, start
from rayft.serving.auth import KeyCheck, admin_keys, api_keys
from rayft.serving.drain import DrainBoard
from rayft.serving.routing import ServedBase

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


def announce(config: RayftConfig, url: str, base: ServedBase) -> None:
    """Where the server answers, what it serves, what its key setup allows, and what it left the
    cluster's jobs."""
    import ray

    print(f"rayft serving {base.name!r} ({base.path}) and its adapters at {url}/v1", flush=True)
    if config.serve.direct_port is not None:
        print(
            f"ingress replicas answer directly (no proxy hop) from http://{config.serve.host}:"
            f"{config.serve.direct_port}/v1",
            flush=True,
        )
    if config.serve.fine_tuning.enabled:
        print(f"fine-tuning API at {url}/v1/fine_tuning/jobs and {url}/v1/files", flush=True)
    project_keys = [key for project in config.serve.projects.values() for key in project.keys]
    for warning in KeyCheck(api_keys(config.serve) + project_keys, admin_keys(config.serve)).warnings():
        print(f"warning: {warning}", flush=True)
    note = reservations(config.serve, ray.cluster_resources().get("CPU")).note
    if note:
        print(f"note: {note}", flush=True)


def wait_for_stop_signal() -> str:
    """Block until SIGTERM or SIGINT arrives; its name."""
    received: list[str] = []
    arrived = threading.Event()

    def stop(signum, _frame) -> None:
        received.append(signal.Signals(signum).name)
        arrived.set()

    for signum in STOP_SIGNALS:
        signal.signal(signum, stop)
    while not arrived.wait(1.0):
        pass
    for signum in STOP_SIGNALS:  # a second signal while draining changes nothing
        signal.signal(signum, signal.SIG_IGN)
    return received[0]


def drain_and_stop(config: RayftConfig) -> dict[str, int]:
    """Refuse new requests, let those in flight finish within the grace period, stop Serve; returns
    the requests each replica still had when the grace ran out (none when all finished)."""
    board = DrainBoard(APP_NAME)
    board.start()
    left = board.wait(config.serve.ingress_replicas, config.serve.shutdown_grace_s)
    shutdown()
    board.clear()
    return left


def serve_forever(config: RayftConfig) -> None:
    """Start the app, say where and what it serves, and drain and stop on SIGTERM or Ctrl-C."""
    import ray

    base = served_base(config, Registry())
    url = start(config, base)
    announce(config, url, base)
    name = wait_for_stop_signal()
    started = time.monotonic()
    left = sum(drain_and_stop(config).values())
    ray.shutdown()
    ended = "every request in flight finished" if not left else f"{left} requests were cut off"
    print(f"rayft serve: stopped on {name} after draining for {time.monotonic() - started:.1f} s; {ended}", flush=True)
