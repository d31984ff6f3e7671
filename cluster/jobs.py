"""`rayft jobs list|status|logs|stop`: follow and control jobs on a Ray cluster.

Exit codes carry the job's final status so scripts can chain on them: 0 SUCCEEDED, 1 FAILED,
3 STOPPED. `status` of a job still PENDING or RUNNING exits 0 (it has not failed); `logs --follow`
and `submit --follow` wait for the end and exit with its code.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from rayft.cluster.client import Cluster, ClusterError

EXIT_CODES = {"SUCCEEDED": 0, "FAILED": 1, "STOPPED": 3}
TERMINAL = set(EXIT_CODES)


def status_name(info) -> str:
    return str(getattr(info.status, "value", info.status))


def exit_code(info) -> int:
    """The exit code for a job's status (0 while it has not ended)."""
    return EXIT_CODES.get(status_name(info), 0)


def failure_summary(info) -> str:
    """The first line of a job's failure message (the exit code, or why Ray could not run it)."""
    message = (info.message or "").strip()
    first = message.splitlines()[0] if message else "no message from Ray"
    return first.split(", last available logs")[0]


def print_final(job_id: str, info, full_message: bool) -> int:
    """One line for the job's end (its error on stderr when it failed); returns the exit code."""
    status = status_name(info)
    if status == "FAILED":
        detail = (info.message or "").strip() if full_message else failure_summary(info)
        print(f"job {job_id} FAILED: {detail}", file=sys.stderr, flush=True)
    else:
        print(f"job {job_id} {status}", flush=True)
    return exit_code(info)


def list_jobs(cluster: Cluster, as_json: bool = False) -> int:
    """Every job the cluster knows, oldest first."""
    jobs = sorted(cluster.call("list_jobs"), key=lambda j: j.start_time or 0)
    rows = [
        {
            "job_id": j.submission_id or j.job_id,
            "status": status_name(j),
            "stage": (j.metadata or {}).get("rayft_stage", ""),
            "config": (j.metadata or {}).get("rayft_config", ""),
            "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(j.start_time / 1000)) if j.start_time else "",
            "entrypoint": j.entrypoint,
            "message": failure_summary(j) if status_name(j) == "FAILED" else "",
        }
        for j in jobs
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "status", "stage", "config", "started", "error")
    for row in rows:
        table.add_row(row["job_id"], row["status"], row["stage"], row["config"], row["started"], row["message"])
    Console().print(table)
    return 0


def show_status(cluster: Cluster, job_id: str) -> int:
    """The job's status; a failed job's error message in full (with Ray's tail of its log)."""
    info = cluster.call("get_job_info", job_id)
    print(f"entrypoint: {info.entrypoint}")
    return print_final(job_id, info, full_message=True)


def show_logs(cluster: Cluster, job_id: str, follow: bool = False) -> int:
    """The job's log so far, or (follow) streamed until the job ends, then its final status."""
    if not follow:
        print(cluster.call("get_job_logs", job_id), end="", flush=True)
        return 0
    return follow_job(cluster, job_id)


async def _stream_logs(cluster: Cluster, job_id: str) -> None:
    async for chunk in cluster.client.tail_job_logs(job_id):
        print(chunk, end="", flush=True)


def follow_job(cluster: Cluster, job_id: str) -> int:
    """Stream the job's output until it ends; returns the exit code of its final status."""
    cluster.call("get_job_info", job_id)  # an unknown job fails here with a clear error
    try:
        asyncio.run(_stream_logs(cluster, job_id))
    except KeyboardInterrupt:
        print(f"\nstopped following; {job_id} keeps running (rayft jobs stop {job_id})", file=sys.stderr)
        return 130
    except RuntimeError as error:
        raise ClusterError(f"{cluster.address}: following {job_id}: {error}") from None
    return print_final(job_id, wait_for_end(cluster, job_id, timeout_s=30), full_message=False)


def wait_for_end(cluster: Cluster, job_id: str, timeout_s: float):
    """The job's info once it has ended, or as it is when `timeout_s` runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        info = cluster.call("get_job_info", job_id)
        if status_name(info) in TERMINAL or time.monotonic() > deadline:
            return info
        time.sleep(0.5)


def stop_job(cluster: Cluster, job_id: str, timeout_s: float = 60) -> int:
    """Stop a job and wait until it has ended: 0 once it is no longer running, 1 if it still runs."""
    info = cluster.call("get_job_info", job_id)
    if status_name(info) in TERMINAL:
        print(f"job {job_id} had already ended: {status_name(info)}")
        return 0
    cluster.call("stop_job", job_id)
    info = wait_for_end(cluster, job_id, timeout_s)
    if status_name(info) not in TERMINAL:
        print(f"job {job_id} is still {status_name(info)} {timeout_s:g} s after the stop request", file=sys.stderr)
        return 1
    print(f"job {job_id} {status_name(info)}")
    return 0
