"""Adapter scale (issue 30): many more adapters than an engine keeps, under skewed traffic.

    python bench/adapter_scale.py                # N=1,000 adapters, 120 s of traffic, 1,000 cycles
    python bench/adapter_scale.py --smoke        # N=12 on the `test` model, 6 s, 8 clients, 20 cycles
                                                 # (make test: tests/test_bench_smoke.py); numbers mean nothing

N adapters (distinct weights; ranks 8 and 16 in turn) are made in seconds from one random adapter of
`rayft.tiny` size `bench` (`serve_common.build_models`): copy i is the source with seeded noise added
to every LoRA tensor, cut to rank 8 (its first 8 rows of A and columns of B) when i is odd. They are
registered as a0 … a{N-1} and served by one `rayft serve` with `max_cpu_loras` far below N (32) and
`max_loras` 4. For `--seconds`, `--clients` concurrent clients stream completions of one fixed prompt
(greedy, `ignore_eos`), each for an adapter drawn from a Zipf distribution (s = 1.1: a0 the most
asked). Then, traffic stopped, `--cycles` load/unload cycles through the admin routes, with the host
RSS of the engine replica's process before and after.

Reported (as JSON, also written to `--out`): requests by HTTP status, 5xx, client failures; wrong
answers (each answer for adapter X against X's greedy answer from vLLM's offline engine in this
process, `LLM(enable_lora=True, max_loras=1)`, one adapter per call, once the server stopped);
first-token p50/p95, cold and warm, from the server's `rayft_adapter_first_token_seconds{start}`
(request at the engine to first token; cold: it waited for its adapter to load; interpolated in its
buckets as Prometheus' histogram_quantile does) and from the client (send to first streamed chunk;
each adapter's first request in the run, cold for certain, and the others); loads by source,
evictions by tier, residents per tier, load seconds (the `rayft_adapter*` series of `GET /metrics`:
one the server does not publish is named in `metrics_missing`, its numbers null); the RSS of the
engine replica (the process whose command line names `ServeReplica:rayft:engine`) with its children,
vLLM's engine core among them, where the adapters' weights live.

Goals: 0 5xx, 0 wrong answers, cold p95 / warm p95 <= 3 (server side), RSS growth < 5% over the
cycles; `goals` in the report says which hold.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import random
import shutil
import statistics
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from prom_series import histogram_quantile, scrape, total
from serve_common import FULL, SMOKE, build_models, served

from rayft.serving.metrics import PUBLISH_S

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PROMPT = "Customer: my order 1234 has not arrived and the tracking page shows nothing. What now?\nAgent:"
ADMIN_KEY = "bench-adapter-scale-admin"
ENGINE_PROCESS = "ServeReplica:rayft:engine"
SERIES = ("rayft_adapters_resident", "rayft_adapter_loads_total", "rayft_adapter_evictions_total")
SERIES += ("rayft_adapter_load_seconds", "rayft_adapter_first_token_seconds")


@dataclass(frozen=True)
class Scale:
    """How big a run is (`--n`, `--seconds`, `--clients`, `--cycles` override the first four)."""

    n: int  # adapters registered and asked for
    seconds: float  # of traffic
    clients: int  # concurrent streaming clients
    cycles: int  # admin load/unload cycles between the RSS readings
    max_cpu_loras: int  # what the server keeps in host memory
    max_loras: int  # distinct adapters in one batch
    new_tokens: int  # greedy tokens per answer
    model: str  # rayft.tiny size


FULL_SCALE = Scale(1000, 120, 64, 1000, 32, 4, 16, FULL.model)
SMOKE_SCALE = Scale(12, 6, 8, 20, 4, 4, 8, SMOKE.model)


@dataclass
class Answer:
    adapter: int
    first_use: bool  # the run's first request for its adapter
    status: int | None = None  # None: it failed in the client
    code: str | None = None  # the error body's code, when not 200
    first_token_s: float | None = None
    text: str = ""


def make_adapters(folder: Path, scale: Scale) -> tuple[str, list[str]]:
    """The base and N adapters (kept when already there): copies of one random rank-16 adapter
    with seeded noise, every odd one cut to rank 8 with `adapter_config.json` to match."""
    import torch
    from safetensors.torch import load_file, save_file

    base, [source] = build_models(folder, replace(FULL, model=scale.model, adapters=1))
    weights = load_file(f"{source}/adapter_model.safetensors")
    config = json.loads(Path(source, "adapter_config.json").read_text())
    paths = []
    for i in range(scale.n):
        path = folder / "scale" / f"a{i}"
        paths.append(str(path))
        if (path / "adapter_model.safetensors").exists():
            continue
        rank = 8 if i % 2 else 16
        noise = torch.Generator().manual_seed(1000 + i)
        copy = {}
        for name, tensor in weights.items():
            noisy = tensor + torch.randn(tensor.shape, generator=noise) * tensor.std()
            if rank < tensor.shape[0] and ".lora_A." in name:
                noisy = noisy[:rank]
            elif rank < tensor.shape[1] and ".lora_B." in name:
                noisy = noisy[:, :rank]
            copy[name] = noisy.contiguous()
        partial = path.with_name(path.name + ".partial")
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        save_file(copy, partial / "adapter_model.safetensors", metadata={"format": "pt"})
        scaled = config | {"r": rank, "lora_alpha": config["lora_alpha"] * rank // config["r"]}
        (partial / "adapter_config.json").write_text(json.dumps(scaled, indent=2))
        partial.rename(path)
    return base, paths


def register(home: Path, base: str, paths: list[str]) -> None:
    """Register the adapters as a0, a1, ... (as `serve_common.register_adapters` does, but in this
    process: a thousand of its statements do not fit in one command-line argument)."""
    from rayft.registry import Registry

    registry = Registry(home / "registry.db")
    for i, path in enumerate(paths):
        if registry.find_by_artifact(path) is None:
            registry.register(f"a{i}", "adapter", base, path, code_revision="bench")


def zipf_draws(n: int, s: float, seed: int):
    """An endless stream of adapter indices, index k with probability ∝ (k + 1)^-s."""
    rng, cumulative = random.Random(seed), list(itertools.accumulate((k + 1) ** -s for k in range(n)))
    while True:
        yield rng.choices(range(n), cum_weights=cumulative)[0]


async def traffic(url: str, scale: Scale) -> list[Answer]:
    """`scale.clients` clients streaming greedy completions of PROMPT for Zipf-drawn adapters until
    `scale.seconds` have passed (requests in flight then finish)."""
    import httpx

    draws, seen, answers = zipf_draws(scale.n, 1.1, seed=30), set(), []
    deadline = time.perf_counter() + scale.seconds

    async def ask(client: httpx.AsyncClient, adapter: int) -> Answer:
        answer = Answer(adapter, first_use=adapter not in seen)
        seen.add(adapter)
        body = {
            "model": f"a{adapter}",
            "prompt": PROMPT,
            "max_tokens": scale.new_tokens,
            "temperature": 0,
            "ignore_eos": True,
            "stream": True,
        }
        sent, done = time.perf_counter(), False
        try:
            async with client.stream("POST", f"{url}/v1/completions", json=body) as response:
                answer.status = response.status_code
                if response.status_code != 200:
                    answer.code = json.loads(await response.aread()).get("error", {}).get("code")
                    return answer
                async for line in response.aiter_lines():
                    done = done or line == "data: [DONE]"
                    if line.startswith("data: ") and not done:
                        answer.first_token_s = answer.first_token_s or time.perf_counter() - sent
                        answer.text += json.loads(line[6:])["choices"][0]["text"]
            if not done:
                answer.status, answer.code = None, "stream ended before [DONE]"
        except (httpx.HTTPError, ValueError) as error:
            answer.status, answer.code = None, type(error).__name__
        return answer

    async def client_loop(client: httpx.AsyncClient) -> None:
        while time.perf_counter() < deadline:
            answers.append(await ask(client, next(draws)))

    limits = httpx.Limits(max_connections=scale.clients, max_keepalive_connections=scale.clients)
    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(300, connect=30)) as client:
        await asyncio.gather(*(client_loop(client) for _ in range(scale.clients)))
    return answers


def adapter_series(before: list, after: list) -> dict:
    """Loads by source, evictions by tier, residents per tier at the end, load and first-token
    times (cold/warm) between the scrapes `before` and `after`."""
    names = {n for n, _, _ in after}
    missing = [s for s in SERIES if not any(n == s or n.startswith(f"{s}_") for n in names)]

    def delta(name: str, label: str, values: tuple[str, ...]) -> dict | None:
        if name in missing:
            return None
        return {v: total(after, name, **{label: v}) - total(before, name, **{label: v}) for v in values}

    def times(name: str, label: str, values: tuple[str, ...]) -> dict | None:
        if name in missing:
            return None
        return {
            v: {
                "count": total(after, f"{name}_count", **{label: v}) - total(before, f"{name}_count", **{label: v}),
                "p50_s": histogram_quantile(before, after, name, 0.5, **{label: v}),
                "p95_s": histogram_quantile(before, after, name, 0.95, **{label: v}),
            }
            for v in values
        }

    first = times("rayft_adapter_first_token_seconds", "start", ("cold", "warm"))
    tiers = ("engine", "host", "disk")
    resident = None if "rayft_adapters_resident" in missing else {t: total(after, SERIES[0], tier=t) for t in tiers}
    return {
        "metrics_missing": missing,
        "loads": delta("rayft_adapter_loads_total", "source", ("disk", "storage")),
        "evictions": delta("rayft_adapter_evictions_total", "tier", ("host", "disk")),
        "resident_at_end": resident,
        "load_seconds": times("rayft_adapter_load_seconds", "source", ("disk", "storage")),
        "first_token": first,
        "ratio_p95_cold_over_warm": ratio(first["cold"]["p95_s"], first["warm"]["p95_s"]) if first else None,
    }


def engine_rss() -> int:
    """Resident bytes of the engine replica's process and its children (vLLM's engine core, which
    holds the adapters' weights, is one: forked from the replica, its command line starts as the
    replica's)."""
    import psutil

    found = [p for p in psutil.process_iter(["cmdline"]) if ENGINE_PROCESS in " ".join(p.info["cmdline"] or [])]
    replicas = [p for p in found if p.ppid() not in {q.pid for q in found}]
    if len(replicas) != 1:
        raise RuntimeError(f"expected one process named {ENGINE_PROCESS!r}, found {len(replicas)}")
    return sum(p.memory_info().rss for p in [replicas[0], *replicas[0].children(recursive=True)])


def cycles(url: str, scale: Scale) -> dict:
    """`scale.cycles` admin load/unload cycles (adapter i % N in cycle i), the engine's RSS around them."""
    import httpx

    before, failed = engine_rss(), 0
    started = time.perf_counter()
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=120) as admin:
        for i in range(scale.cycles):
            name = f"a{i % scale.n}"
            loaded = admin.post("/admin/adapters", json={"model": name}).status_code == 200
            failed += not loaded or admin.delete(f"/admin/adapters/{name}").status_code != 200
    seconds, after = time.perf_counter() - started, engine_rss()
    return {
        "cycles": scale.cycles,
        "failed_cycles": failed,
        "cycle_ms": seconds / max(scale.cycles, 1) * 1000,
        "rss_before_mb": before / 2**20,
        "rss_after_mb": after / 2**20,
        "rss_growth_share": (after - before) / before,
    }


def references(base: str, paths: dict[int, str], scale: Scale) -> dict[int, str]:
    """Greedy answer to PROMPT of each adapter in `paths`, from vLLM's offline engine with one
    adapter at a time (the prompt tokenized as the server does: `rayft.chat.token_ids`)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from rayft.chat import token_ids
    from rayft.vllm_setup import engine_dtype

    llm = LLM(
        model=base,
        dtype=engine_dtype(),
        enforce_eager=True,
        max_model_len=512,
        enable_lora=True,
        max_loras=1,
        max_lora_rank=16,
        max_num_seqs=1,
        seed=0,
    )
    prompt = {"prompt_token_ids": token_ids(llm.get_tokenizer(), PROMPT)}
    sampling = SamplingParams(temperature=0, max_tokens=scale.new_tokens, ignore_eos=True)
    answers = {}
    for i, path in sorted(paths.items()):  # one call each: many adapters in one call thrash its single slot
        [output] = llm.generate([prompt], sampling, lora_request=LoRARequest(f"a{i}", i + 1, path), use_tqdm=False)
        answers[i] = output.outputs[0].text
    return answers


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def percentiles(values: list[float]) -> dict:
    if not values:
        return {"count": 0, "p50_s": None, "p95_s": None}
    p95 = statistics.quantiles(values, n=20)[18] if len(values) > 1 else values[0]
    return {"count": len(values), "p50_s": statistics.median(values), "p95_s": p95}


def run(folder: Path, scale: Scale) -> dict:
    base, paths = make_adapters(folder, scale)
    home = folder / "home"
    register(home, base, paths)
    env = os.environ | {"RAYFT_HOME": str(home)}
    settings = {
        "port": 8785,
        "max_loras": scale.max_loras,
        "max_cpu_loras": scale.max_cpu_loras,
        "max_num_seqs": 64,
        "max_model_len": 512,
        "max_concurrent_requests": 512,
        "admin_keys": [ADMIN_KEY],
    }
    with served(folder, "serve-adapters", base, settings, env) as server:
        start_s = server.first_token_s
        time.sleep(PUBLISH_S + 1)  # the start-up request's series, if any, in `before` (see below)
        before = scrape(server.url)
        started = time.perf_counter()
        answers = asyncio.run(traffic(server.url, scale))
        traffic_s = time.perf_counter() - started
        time.sleep(PUBLISH_S + 1)  # series the engine or another replica publishes arrive on the board
        after = scrape(server.url)
        memory = cycles(server.url, scale)
    series = adapter_series(before, after)
    asked = sorted({a.adapter for a in answers if a.status == 200})
    expected = references(base, {i: paths[i] for i in asked}, scale) if asked else {}
    whole = [a for a in answers if a.status == 200 and a.first_token_s is not None]
    statuses = Counter(str(a.status) if a.code is None else f"{a.status} {a.code}" for a in answers)
    first_use = percentiles([a.first_token_s for a in whole if a.first_use])
    repeat = percentiles([a.first_token_s for a in whole if not a.first_use])
    wrong = sum(a.text != expected[a.adapter] for a in whole)
    return {
        "model": f"{scale.model} (fp32); adapters r=16 and r=8 in turn on q/k/v/o",
        "scale": asdict(scale),
        "server_start_s": start_s,
        "traffic_s": traffic_s,
        "requests": len(answers),
        "requests_per_s": len(answers) / traffic_s,
        "by_status": statuses,
        "5xx": sum(a.status is not None and a.status >= 500 for a in answers),
        "client_failures": sum(a.status is None for a in answers),
        "adapters_asked": len({a.adapter for a in answers}),
        "adapters_answered": len(asked),
        "answers_checked": len(whole),
        "wrong_answers": wrong,
        "distinct_expected_answers": len(set(expected.values())),
        "client_first_token": {
            "first_use": first_use,
            "repeat": repeat,
            "ratio_p95_first_use_over_repeat": ratio(first_use["p95_s"], repeat["p95_s"]),
        },
        "server": series,
        "engine_memory": memory,
    }


def goals(report: dict) -> dict:
    cold_over_warm = report["server"]["ratio_p95_cold_over_warm"]
    return {
        "no_5xx": report["5xx"] == 0 and report["client_failures"] == 0,
        "no_wrong_answers": report["wrong_answers"] == 0,
        "cold_p95_within_3x_warm": None if cold_over_warm is None else cold_over_warm <= 3,
        "rss_growth_under_5_percent": report["engine_memory"]["rss_growth_share"] < 0.05,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, help="adapters (default 1,000; --smoke: 12)")
    parser.add_argument("--seconds", type=float, help="of traffic (default 120; --smoke: 6)")
    parser.add_argument("--clients", type=int, help="concurrent clients (default 64; --smoke: 8)")
    parser.add_argument("--cycles", type=int, help="load/unload cycles (default 1,000; --smoke: 20)")
    parser.add_argument("--folder", help="where the model and adapters are kept (default: a temp folder)")
    parser.add_argument("--smoke", action="store_true", help="everything tiny (make test)")
    parser.add_argument("--out", help="also write the JSON here")
    args = parser.parse_args()
    chosen = {k: getattr(args, k) for k in ("n", "seconds", "clients", "cycles") if getattr(args, k) is not None}
    scale = replace(SMOKE_SCALE if args.smoke else FULL_SCALE, **chosen)
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rayft-bench-adapters-"))
    started = time.perf_counter()
    report = run(folder, scale)
    report["wall_s"] = time.perf_counter() - started
    report["goals"] = goals(report)
    print(json.dumps(report, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
