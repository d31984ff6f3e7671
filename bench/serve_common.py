"""What the serving benches share (serve_throughput.py and its parts serve_structured.py,
serve_limits.py and serve_vllm.py): the workload's sizes, the bench model with its random adapters,
the prompts, `rayft serve` as its own process, and the HTTP load generator."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Workload:
    """How big a run is. FULL is what bench/RESULTS.md records; SMOKE the same code at its smallest
    (`--smoke`, run by `make test` so the benches cannot rot; its numbers mean nothing)."""

    model: str  # rayft.tiny size
    adapters: int  # random LoRA adapters, r=16 on q/k/v/o
    prompts: int  # requests per wave (all in flight at once)
    new_tokens: int  # greedy tokens per request
    engine_rounds: int  # rounds of every engine scenario
    peft_batch: int  # transformers+peft generate: requests per batch
    peft_single: int  # transformers+peft generate: requests timed one at a time
    http_waves: int  # timed waves over HTTP
    latency_requests: int  # sequential cache hits and /health calls
    small_requests: int  # small requests per p99 (limits part)
    rounds: int  # rounds of the limits and structured parts
    versus_rounds: int  # rounds of rayft's server against vLLM's own (http part)
    big_prompt_rates: tuple[int, ...]  # hostile streams: refused prompts per second
    refusals: int  # 60 MB bodies refused, per way of sending
    one_server: bool  # every HTTP part on one `rayft serve` (a start costs ~30 s here), not each on its own
    startup_rounds: int  # start-up part: rounds of fresh starts (0: none; the smoke reads its one server's breakdown)
    startup_sides: tuple[str, ...]  # start-up part: how vLLM's engine core starts (serve_startup.py)


FULL = Workload("bench", 8, 64, 64, 5, 16, 16, 2, 200, 300, 3, 4, (5, 10), 3, False, 3, ("fork", "spawn"))
SMOKE = Workload("test", 2, 8, 8, 1, 4, 2, 1, 5, 10, 1, 1, (5,), 1, True, 0, ())


@dataclass(frozen=True)
class Served:
    """A running `rayft serve`."""

    url: str
    direct_url: str | None  # the ingress replica's own port (serve.direct_port), when set
    first_token_s: float  # from the process's start (its own local Ray's start included) to its first token
    pid: int  # its process: every process it started (Ray's, vLLM's) is a descendant


@contextmanager
def served(folder: Path, name: str, base: str, settings: dict, env: dict) -> Iterator[Served]:
    """`rayft serve` for `base` with `settings` (`port` among them) in its own process, from its
    start to its first token; stopped when the block ends. Its config and output: `folder/name.*`."""
    server, started = start_server(folder / f"{name}.yaml", base, settings, env)
    url = f"http://127.0.0.1:{settings['port']}"
    try:
        first_token_s = wait_for_first_token(url, "base", started, server)
        direct = settings.get("direct_port")
        yield Served(url, f"http://127.0.0.1:{direct}" if direct else None, first_token_s, server.pid)
    finally:
        stop_server(server, url)


def build_models(folder: Path, workload: Workload) -> tuple[str, list[str]]:
    """The base and its random adapters (reused when already there)."""
    from rayft.data.samples import tokenizer_corpus
    from rayft.tiny import build_tiny_model, random_adapter

    base = folder / "base"
    if not (base / "config.json").exists():
        build_tiny_model(base, tokenizer_corpus(), size=workload.model)
    adapters = []
    for i in range(workload.adapters):
        path = folder / f"adapter{i}"
        if not (path / "adapter_config.json").exists():
            random_adapter(base, path, seed=100 + i, rank=16)
        adapters.append(str(path))
    return str(base), adapters


def prompts(tokenizer, n: int) -> list[list[int]]:
    """`n` support-ticket chats up to their answer, as token ids with the generation prompt."""
    from rayft.data.samples import support_tickets

    records = support_tickets(n, seed=11)
    return [
        tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for r in records
    ]


def register_adapters(base: str, adapters: list[str], env: dict) -> None:
    """Register the adapters as a0, a1, ... in the registry of `env`'s RAYFT_HOME (once)."""
    register = "from rayft.registry import Registry; r = Registry(); " + "; ".join(
        f"r.find_by_artifact({p!r}) or r.register('a{i}', 'adapter', {base!r}, {p!r})" for i, p in enumerate(adapters)
    )
    subprocess.run([sys.executable, "-c", register], env=env, check=True, timeout=120)


def start_server(config: Path, base: str, settings: dict, env: dict) -> tuple[subprocess.Popen, float]:
    """`rayft serve` in its own process (and its own local Ray), its output in a `.log` beside
    `config`; returns it and its start time."""
    import yaml

    config.write_text(yaml.safe_dump({"name": "bench", "model": {"base": base}, "serve": settings}))
    started = time.perf_counter()
    with config.with_suffix(".log").open("w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "rayft.cli", "serve", str(config)],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    return server, started


def stop_server(server: subprocess.Popen, url: str) -> None:
    """Stop the server as Kubernetes does (SIGTERM to its main process: it drains and stops its
    Ray), its whole process group if that takes over two minutes, and wait until its port is closed."""
    import httpx

    if server.poll() is not None:  # it ended by itself (a failed start): its output says why
        return
    os.kill(server.pid, 15)
    try:
        server.wait(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, 9)
        server.wait(timeout=60)
    for _ in range(60):
        try:
            httpx.get(f"{url}/health", timeout=1)
        except httpx.HTTPError:
            return
        time.sleep(1)


def wait_for_first_token(
    url: str, model: str, started: float, server: subprocess.Popen, log: Path | None = None
) -> float:
    """Seconds from `started` to the server's first completion token; fails at once if the server
    process ends first (its output in `log`, by default beside `rayft serve`'s config), and after 600 s."""
    import httpx

    body = {"model": model, "prompt": "Hello", "max_tokens": 1}
    log = log or Path(server.args[-1]).with_suffix(".log")
    while time.perf_counter() - started < 600:
        if server.poll() is not None:
            raise RuntimeError(f"{server.args[:4]} exited with {server.returncode} before its first token; see {log}")
        try:
            if httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} gave no token within 600 s")


def http_rate(url: str, texts: list[str], models: list[str], w: Workload) -> float:
    """Output tokens/s of `w.http_waves` waves of `w.prompts` completion requests, all in flight (one
    asyncio client, so the load generator itself takes little CPU from the server), after a warm-up
    wave; the response cache is bypassed."""
    import asyncio

    import httpx

    async def run() -> float:
        limits = httpx.Limits(max_connections=w.prompts, max_keepalive_connections=w.prompts)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:

            async def ask(i: int) -> int:
                body = {
                    "model": models[i % w.prompts],
                    "prompt": texts[i % w.prompts],
                    "max_tokens": w.new_tokens,
                    "ignore_eos": True,
                    "temperature": 0,
                }
                response = await client.post(f"{url}/v1/completions", json=body, headers={"x-rayft-cache": "bypass"})
                response.raise_for_status()
                return response.json()["usage"]["completion_tokens"]

            async def wave(n: int) -> int:
                queue = iter(range(n))

                async def worker() -> int:
                    return sum([await ask(i) for i in queue])

                return sum(await asyncio.gather(*(worker() for _ in range(w.prompts))))

            await wave(w.prompts)  # warm-up
            started = time.perf_counter()
            tokens = await wave(w.http_waves * w.prompts)
            return tokens / (time.perf_counter() - started)

    return asyncio.run(run())
