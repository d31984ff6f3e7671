"""rayft's HTTP server against vLLM's own OpenAI server, side by side (issue 30, item 5).

vLLM's server (`python -m vllm.entrypoints.openai.api_server`) serves the bench model with the
engine settings of `rayft serve` in the http part (float32, eager, LoRA on with the bench's adapters
as a0, a1, ..., `max_loras`, rank 16, `max_num_seqs` = the wave size, `max_model_len` 512) and the
environment of rayft's engine (`rayft.vllm_setup.VLLM_ENV`: its engine core's model runner in the
engine core process, `VLLM_ENABLE_V1_MULTIPROCESSING=0`; one compute thread per core, as
`engine.use_cpu_threads` sets, where vLLM's server would cut itself to one; rayft's CPU LoRA ops
load in any vLLM process through their entry point). With `multiprocessing`, a second vLLM server
runs as vLLM does by default (`=1`: the model runner in a worker process of its own, its threads
bound to cores, one core left to the scheduler).

The same load generator (`serve_common.http_rate`: one asyncio client, one adapter, the wave size in
flight) drives each side in turn: rayft through Serve's proxy and on the ingress replica's direct
port, and vLLM. Sides run in one order in even rounds and in reverse in odd ones, so the machine's
drift hits them alike; a ratio is taken within each round, its median over rounds reported. Both
servers stay up throughout, so each side is measured beside the other one idle; every measurement
records the cores each server, the client and the rest of the machine kept busy, so an idle
server's cost (Ray's own processes tick) and a busy machine show in the report; ratios are also
given over the quiet rounds alone. Ray runs its workers (rayft's replicas and engine) at nice 15 and
vLLM's server runs at 0: beside a busy neighbour the two sides do not get the same share of the CPU.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from serve_common import Served, Workload, http_rate, stop_server, wait_for_first_token

from rayft.vllm_setup import VLLM_ENV

VLLM_PORTS = {False: 8780, True: 8781}  # by `multiprocessing`
# A round in which other processes kept more of the machine busy than this is not quiet: on 2 cores
# one busy neighbour stalls every OpenMP step of an engine, and ratios then measure the scheduler.
QUIET_REST_CORES = 0.15


def vllm_command(base: str, adapters: list[str], port: int, w: Workload) -> list[str]:
    """vLLM's OpenAI server for `base`, its adapters a0, a1, ..., on rayft's engine settings."""
    flags = {
        "--model": base,
        "--served-model-name": "base",
        "--max-loras": w.adapters,
        "--max-lora-rank": 16,
        "--dtype": "float32",
        "--max-model-len": 512,
        "--max-num-seqs": w.prompts,
        "--seed": 0,
        "--host": "127.0.0.1",
        "--port": port,
    }
    words = [str(part) for flag, value in flags.items() for part in (flag, value)]
    modules = [f"a{i}={path}" for i, path in enumerate(adapters)]
    server = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
    return server + words + ["--enforce-eager", "--enable-lora", "--lora-modules", *modules]


@dataclass(frozen=True)
class Versus:
    """What vLLM's server is started with: the bench model, its adapters, where its output goes, the
    environment, and whether vLLM's default multiprocessing server runs too."""

    base: str
    adapters: list[str]
    folder: Path
    env: dict
    multiprocessing: bool = False


@contextmanager
def vllm_server(versus: Versus, w: Workload, multiprocessing: bool) -> Iterator[Served]:
    """vLLM's OpenAI server in its own process, from its start to its first token (its output in
    `vllm[-mp].log` in the bench folder); stopped when the block ends."""
    if multiprocessing:  # as vLLM runs by default
        env = versus.env | {"VLLM_ENABLE_V1_MULTIPROCESSING": "1"}
    else:  # as rayft's engine runs: VLLM_ENV, and every core's thread (`engine.use_cpu_threads`)
        threads = {"OMP_NUM_THREADS": str(len(os.sched_getaffinity(0)))}
        env = VLLM_ENV | threads | versus.env | {"VLLM_ENABLE_V1_MULTIPROCESSING": "0"}
    port = VLLM_PORTS[multiprocessing]
    log_path = versus.folder / f"vllm{'-mp' if multiprocessing else ''}.log"
    started = time.perf_counter()
    with log_path.open("w") as log:
        command = vllm_command(versus.base, versus.adapters, port, w)
        server = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        first_token_s = wait_for_first_token(url, "a0", started, server, log_path)
        yield Served(url, None, first_token_s, server.pid)
    finally:
        stop_server(server, url)


def busy_seconds(trees: dict[str, int]) -> dict[str, float]:
    """CPU seconds (user + system) so far of each process in `trees` with its descendants, of this
    process alone (`client`: the load generator) and of the whole machine (`machine`)."""
    import psutil

    def used(process: psutil.Process) -> float:
        try:
            times = process.cpu_times()
        except psutil.NoSuchProcess:  # it ended meanwhile
            return 0.0
        return times.user + times.system

    seconds = {"client": used(psutil.Process())}
    for name, pid in trees.items():
        try:
            root = psutil.Process(pid)
            seconds[name] = sum(used(p) for p in [root, *root.children(recursive=True)])
        except psutil.NoSuchProcess:
            seconds[name] = 0.0
    machine = psutil.cpu_times()
    seconds["machine"] = machine.user + machine.system + machine.nice + machine.irq + machine.softirq
    return seconds


def measured(url: str, texts: list[str], w: Workload, pids: dict[str, int]) -> dict:
    """One side's rate (one adapter for every request) and the cores each server's process tree of
    `pids`, the client and the rest of the machine kept busy meanwhile (warm-up wave included)."""
    before, started = busy_seconds(pids), time.perf_counter()
    rate = http_rate(url, texts, ["a0"] * w.prompts, w)
    after, wall = busy_seconds(pids), time.perf_counter() - started
    cores = {name: (after[name] - before[name]) / wall for name in after}
    cores["rest"] = cores.pop("machine") - sum(cores.values())
    return {"tok_s": rate, "cores": {name: round(value, 3) for name, value in cores.items()}}


def versus_vllm(rayft: Served, texts: list[str], w: Workload, versus: Versus) -> dict:
    """rayft's server (through its proxy and on its direct port) against vLLM's own, `w.versus_rounds`
    rounds of one adapter's traffic (`texts`, the wave's prompts)."""
    with ExitStack() as stack:
        vllm = {False: stack.enter_context(vllm_server(versus, w, multiprocessing=False))}
        if versus.multiprocessing:
            vllm[True] = stack.enter_context(vllm_server(versus, w, multiprocessing=True))
        urls = {"vllm": vllm[False].url, "rayft_proxy": rayft.url, "rayft_direct": rayft.direct_url}
        pids = {"rayft": rayft.pid, "vllm": vllm[False].pid}
        if versus.multiprocessing:
            urls["vllm_multiprocessing"], pids["vllm_multiprocessing"] = vllm[True].url, vllm[True].pid
        rounds = []
        for round_ in range(w.versus_rounds):
            order = list(urls) if round_ % 2 == 0 else list(urls)[::-1]
            rounds.append({side: measured(urls[side], texts, w, pids) for side in order})
    quiet = [r for r in rounds if all(m["cores"]["rest"] < QUIET_REST_CORES for m in r.values())]
    starts = {("multiprocessing" if mp else "in_process"): v.first_token_s for mp, v in vllm.items()}
    return {
        "tok_s": {side: statistics.median(r[side]["tok_s"] for r in rounds) for side in urls},
        "ratio_to_vllm (within each round, median over rounds)": ratios(rounds),
        f"quiet rounds (the rest of the machine under {QUIET_REST_CORES} cores)": len(quiet),
        "ratio_to_vllm (quiet rounds)": ratios(quiet) if quiet else None,
        "vllm_start_to_first_token_s": starts,
        "rounds": rounds,
    }


def ratios(rounds: list[dict]) -> dict[str, float]:
    """Each side's tokens/s over vLLM's (in-process) within each round, the median over `rounds`."""
    return {
        side: statistics.median(r[side]["tok_s"] / r["vllm"]["tok_s"] for r in rounds)
        for side in rounds[0]
        if side != "vllm"
    }
