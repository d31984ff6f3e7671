"""Start-up of `rayft serve` to its first adapter token (issue 30, item 4), a part of serve_throughput.py.

Each start is a fresh `rayft serve` process (its own local Ray) with the quickstart's serve settings
(`configs/quickstart.yaml`: port, `max_loras` 2, rank 16, `max_model_len` 512) on a model of the
quickstart's size (`rayft.tiny` size `test`) with one random adapter, nothing in `serve.adapters`:
the clock runs from the process's start to the first completion token of adapter a0, which is
loaded on that first request. Two ways of starting vLLM's engine-core process alternate round by
round: `fork` (rayft's default on CPU, `rayft.vllm_setup.fork_engine_core`) and `spawn` (vLLM's
own, `RAYFT_ENGINE_CORE_SPAWN=1`). Each start's own breakdown (the lines `rayft serve` prints
after "started in") is kept beside its time.
"""

from __future__ import annotations

import os
import socket
import statistics
import time
from dataclasses import replace
from pathlib import Path

from serve_common import SMOKE, build_models, register_adapters, start_server, stop_server, wait_for_first_token

QUICKSTART_SERVE = {"port": 8790, "max_loras": 2, "max_lora_rank": 16, "max_model_len": 512}
SIDES = {"fork": {}, "spawn": {"RAYFT_ENGINE_CORE_SPAWN": "1"}}


def first_adapter_token(folder: Path, name: str, base: str, env: dict) -> dict:
    """One start: seconds to a0's first token, and the breakdown `rayft serve` printed."""
    url = f"http://127.0.0.1:{QUICKSTART_SERVE['port']}"
    with socket.socket() as probe:  # a server left on the port would answer for this one
        if probe.connect_ex(("127.0.0.1", QUICKSTART_SERVE["port"])) == 0:
            raise RuntimeError(f"{url} is already in use")
    server, started = start_server(folder / f"{name}.yaml", base, QUICKSTART_SERVE, env)
    try:
        seconds = wait_for_first_token(url, "a0", started, server)
        time.sleep(1)  # the breakdown is printed right after the app answers
    finally:
        stop_server(server, url)
    return {"first_adapter_token_s": seconds, "breakdown": breakdown(folder / f"{name}.log")}


def breakdown(log: Path) -> list[str]:
    """The start-up breakdown `rayft serve` printed in its output `log` ("started in ..." and the
    indented lines after it); empty when there is none."""
    lines = log.read_text(errors="replace").splitlines()
    starts = [i for i, line in enumerate(lines) if line.startswith("started in")]
    if not starts:
        return []
    return [line.strip() for line in lines[starts[0] : starts[0] + 14] if line.startswith(("started", "  "))]


def startup_part(folder: Path, rounds: int, sides: tuple[str, ...]) -> dict:
    """`rounds` rounds of one start per side in `sides`, in reverse order every other round; the
    median per side, and fork ÷ spawn when both ran. The model and its registry: `folder/startup`."""
    folder = folder / "startup"
    base, adapters = build_models(folder, replace(SMOKE, model="test", adapters=1))
    env = os.environ | {"RAYFT_HOME": str(folder / "home")}
    register_adapters(base, adapters, env)
    runs: dict[str, list[dict]] = {side: [] for side in sides}
    for round_ in range(rounds):
        for side in sides if round_ % 2 == 0 else sides[::-1]:
            runs[side].append(first_adapter_token(folder, f"startup-{side}-{round_}", base, env | SIDES[side]))
    medians = {side: statistics.median(r["first_adapter_token_s"] for r in runs[side]) for side in sides}
    result = {"settings": QUICKSTART_SERVE, "median_first_adapter_token_s": medians, "runs": runs}
    if set(sides) == set(SIDES):
        result["ratio_fork_over_spawn"] = medians["fork"] / medians["spawn"]
    return result
