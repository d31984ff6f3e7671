"""`rayft serve CONFIG` as a process: start, say where and where start-up went, run until told to
stop, drain, exit 0.

SIGTERM (how Kubernetes stops a pod) and SIGINT (Ctrl-C, which a terminal sends to the whole
process group; Ray's own processes block it) both start a drain (`drain.py`): every ingress replica
answers new requests with 503 and Retry-After, the requests in flight get up to
`serve.shutdown_grace_s` to finish, then Serve and the process's Ray stop and the process exits 0
with one line saying how it ended. rayft's handlers are installed when the process starts, and
taken back after Ray starts (Ray's driver installs its own, which exits 1 with a native stack dump),
before anything is deployed, so the endpoint never answers without them. A signal during start-up
stops start-up at the next phase (before Serve deploys anything: no request can be in flight), or,
once the app is deployed, drains as above; a signal that reaches Ray's handler while Ray itself
starts ends that start, and the process still exits 0 with its line.
"""

from __future__ import annotations

import contextlib
import time

import psutil

from rayft.config import RayftConfig
from rayft.registry import Registry
from rayft.serving.app import APP_NAME, reservations, served_base, shutdown, start
from rayft.serving.auth import KeyCheck, admin_keys, api_keys
from rayft.serving.drain import DrainBoard
from rayft.serving.routing import ServedBase
from rayft.serving.startup import PhaseClock, breakdown
from rayft.serving.stop_signals import StoppedDuringStartup, StopSignals


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


def drain_and_stop(config: RayftConfig) -> dict[str, int]:
    """Refuse new requests, let those in flight finish within the grace period, stop Serve; returns
    the requests each replica still had when the grace ran out (none when all finished)."""
    board = DrainBoard(APP_NAME)
    board.start()
    left = board.wait(config.serve.ingress_replicas, config.serve.shutdown_grace_s)
    shutdown()
    board.clear()
    return left


def serve_forever(config: RayftConfig, stop: StopSignals | None = None) -> None:
    """Start the app, say where, what it serves and where start-up went, and drain and stop on
    SIGTERM or Ctrl-C, including one that comes during start-up."""
    import ray

    stop, clock = stop or StopSignals(), PhaseClock()
    clock.add("python and imports", time.time() - psutil.Process().create_time())
    try:
        with clock.phase("registry and base"):
            base = served_base(config, Registry())
        url = start(config, base, clock, before=stop.before)
    except (StoppedDuringStartup, SystemExit) as stopped:  # SystemExit: Ray's handler, while Ray started
        name = stopped.args[0] if isinstance(stopped, StoppedDuringStartup) else "SIGTERM"
        shutdown_quietly()
        print(f"rayft serve: stopped on {name} during start-up, before serving anything", flush=True)
        return
    announce(config, url, base)
    print(f"started in {clock.total():.1f} s:\n{breakdown(clock.phases)}", flush=True)
    name = stop.wait()
    started = time.monotonic()
    left = sum(drain_and_stop(config).values())
    ray.shutdown()
    ended = "every request in flight finished" if not left else f"{left} requests were cut off"
    print(f"rayft serve: stopped on {name} after draining for {time.monotonic() - started:.1f} s; {ended}", flush=True)


def shutdown_quietly() -> None:
    """Stop whatever start-up had started: Serve, then this process's Ray."""
    import ray

    with contextlib.suppress(Exception):
        if ray.is_initialized():
            shutdown()
    with contextlib.suppress(Exception):
        ray.shutdown()
