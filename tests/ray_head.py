"""A real `ray start --head` for the Jobs tests: its own temp dir, its own free ports, and a stop
that ends exactly the processes of that head (never `ray stop`, which ends every Ray on the machine).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import psutil

PORT_FLAGS = (
    "--port",
    "--dashboard-port",
    "--ray-client-server-port",
    "--node-manager-port",
    "--object-manager-port",
    "--dashboard-agent-listen-port",
    "--dashboard-agent-grpc-port",
    "--metrics-export-port",
    "--runtime-env-agent-port",
)
WORKER_PORTS = 200


@dataclass
class Head:
    process: subprocess.Popen
    temp_dir: str
    ports: dict[str, int]
    log: Path

    @property
    def address(self) -> str:
        return f"http://127.0.0.1:{self.ports['--dashboard-port']}"


def free_ports(n: int) -> list[int]:
    sockets = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def free_port_range(size: int) -> int:
    """The first port of `size` consecutive ports that nothing listens on."""
    in_use = {c.laddr.port for c in psutil.net_connections("inet") if c.laddr}
    for start in range(20000, 60000 - size, size):
        if not in_use & set(range(start, start + size)):
            return start
    raise RuntimeError("no free worker port range")


def start_head(num_cpus: int = 4, env: dict[str, str] | None = None, timeout_s: float = 90) -> Head:
    """`ray start --head --block` in its own session, process group and temp dir; returns when its
    Jobs API answers."""
    temp_dir = tempfile.mkdtemp(prefix="rft-", dir="/tmp")  # short: Ray's socket paths must fit 107 chars
    ports = dict(zip(PORT_FLAGS, free_ports(len(PORT_FLAGS))))
    low = free_port_range(WORKER_PORTS)
    command = [
        str(Path(sys.executable).parent / "ray"),
        "start",
        "--head",
        "--block",
        f"--temp-dir={temp_dir}",
        f"--num-cpus={num_cpus}",
        "--num-gpus=0",
        "--object-store-memory=300000000",
        "--dashboard-host=127.0.0.1",
        "--include-dashboard=true",
        "--disable-usage-stats",
        f"--min-worker-port={low}",
        f"--max-worker-port={low + WORKER_PORTS - 1}",
        *(f"{flag}={port}" for flag, port in ports.items()),
    ]
    head_env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS")}
    head_env |= {"RAY_AUTH_MODE": "disabled", "RAY_USAGE_STATS_ENABLED": "0"} | (env or {})
    log = Path(temp_dir) / "ray-start.log"
    with log.open("w") as out:
        process = subprocess.Popen(command, env=head_env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    head = Head(process, temp_dir, ports, log)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            _fail(head, f"ray start exited with {process.returncode}")
        if _head_node_listed(head, head_env.get("RAY_AUTH_TOKEN")):
            return head
        time.sleep(0.5)
    _fail(head, f"the head's Jobs API did not answer in {timeout_s:g} s")


def _head_node_listed(head: Head, token: str | None) -> bool:
    """Whether the head's dashboard answers and its state API lists the head node (a head can
    answer job requests a moment before its node is registered)."""
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(f"{head.address}/api/v0/nodes", headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.loads(response.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError):
        return False
    return any(n.get("is_head_node") for n in nodes)


def _fail(head: Head, why: str):
    output = head.log.read_text()[-3000:]
    stop_head(head)
    raise RuntimeError(f"{why}:\n{output}")


def _is_ours(process: psutil.Process, head: Head) -> bool:
    """A process of this head: it names the head's temp dir, or it joined the head's GCS (drivers)."""
    try:
        if any(head.temp_dir in arg for arg in process.cmdline()):
            return True
        return process.environ().get("RAY_ADDRESS", "").endswith(f":{head.ports['--port']}")
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return False


def head_processes(head: Head) -> set[psutil.Process]:
    """Every live process of this head: `ray start`, all its descendants, and anything else that
    names the head's temp dir or talks to its GCS (processes re-parented when their parent died)."""
    found = set()
    try:
        root = psutil.Process(head.process.pid)
        found |= {root, *root.children(recursive=True)}
    except psutil.NoSuchProcess:
        pass
    found |= {p for p in psutil.process_iter() if p.pid != os.getpid() and _is_ours(p, head)}
    return {p for p in found if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}


def stop_head(head: Head) -> set[int]:
    """End this head's processes (TERM, then KILL after 3 s); returns their pids."""
    stopped: set[int] = set()
    for _ in range(3):  # a second pass catches processes started while the first one ran
        processes = head_processes(head)
        if not processes:
            break
        stopped |= {p.pid for p in processes}
        for p in processes:
            try:
                p.terminate()
            except psutil.NoSuchProcess:
                pass
        _, alive = psutil.wait_procs(processes, timeout=3)
        for p in alive:
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        psutil.wait_procs(alive, timeout=5)
    head.process.wait(timeout=5)
    shutil.rmtree(head.temp_dir, ignore_errors=True)
    return stopped


@contextmanager
def running_head(**options):
    """A head for the duration of the block; the session's in-process Ray is shut down first
    (one Ray cluster at a time), and the head is stopped however the block ends."""
    from session_ray import stop_session_ray

    stop_session_ray()
    head = start_head(**options)
    try:
        yield head
    finally:
        stop_head(head)
