"""Serving throughput: multi-LoRA on vLLM's CPU build with and without rayft's CPU LoRA ops, against
transformers+peft, and the HTTP endpoint (start-up, mixed traffic, response-cache hits).

    python bench/serve_throughput.py                 # everything (about 20 minutes on 2 cores)
    python bench/serve_throughput.py --part engine   # issue 8: ops plugin off/on, peft baselines
    python bench/serve_throughput.py --part http     # issue 5: rayft serve over HTTP
    python bench/serve_throughput.py --part limits   # issue 18: small requests beside refused 2 MB ones;
                                                     # what refusing a 60 MB body costs (issue 27)

Model: `rayft.tiny` size `bench` (hidden 512, intermediate 1376, 8 layers, 8 heads, fp32, random
weights) with 8 random LoRA adapters (r=16 on q/k/v/o). Workload: 64 prompts × 64 greedy tokens with
`ignore_eos`. Every number below comes from this one run, so the ratios compare like with like.
Results are printed as JSON; bench/RESULTS.md records them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

ADAPTERS, PROMPTS, NEW_TOKENS, RUNS = 8, 64, 64, 5
SCENARIOS = ("base", "one_adapter", "mixed_8", "mixed_8_and_base")


def build_models(folder: Path) -> tuple[str, list[str]]:
    """The bench-size base and 8 random adapters (reused when already there)."""
    from rayft.data.samples import tokenizer_corpus
    from rayft.tiny import build_tiny_model, random_adapter

    base = folder / "base"
    if not (base / "config.json").exists():
        build_tiny_model(base, tokenizer_corpus(), size="bench")
    adapters = []
    for i in range(ADAPTERS):
        path = folder / f"adapter{i}"
        if not (path / "adapter_config.json").exists():
            random_adapter(base, path, seed=100 + i, rank=16)
        adapters.append(str(path))
    return str(base), adapters


def prompts(tokenizer) -> list[list[int]]:
    from rayft.data.samples import support_tickets

    records = support_tickets(PROMPTS, seed=11)
    return [
        tokenizer.apply_chat_template(r["messages"][:-1], add_generation_prompt=True, tokenize=True, return_dict=True)[
            "input_ids"
        ]
        for r in records
    ]


def assignment(scenario: str) -> list[int | None]:
    """Adapter index per prompt (None = base)."""
    if scenario == "base":
        return [None] * PROMPTS
    if scenario == "one_adapter":
        return [0] * PROMPTS
    if scenario == "mixed_8":
        return [i % ADAPTERS for i in range(PROMPTS)]
    return [None if i % (ADAPTERS + 1) == ADAPTERS else i % (ADAPTERS + 1) for i in range(PROMPTS)]


# ---- engine level (one subprocess per plugin setting: vLLM loads plugins once per process) ----


def vllm_engine_rates(base: str, adapters: list[str]) -> dict:
    """Per scenario on vLLM's offline engine: `tok_s`, output tokens/s at the median of RUNS rounds,
    and `seconds`, each round's wall time. Every round runs every scenario once, in forward order in
    even rounds and in reverse in odd ones, so the machine's drift and any after-effect of the
    scenario before hit every scenario alike; ratios are then taken round by round (`paired`)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    sampling = SamplingParams(temperature=0, max_tokens=NEW_TOKENS, ignore_eos=True)
    llm = LLM(
        model=base,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        enable_lora=True,
        max_loras=ADAPTERS,
        max_lora_rank=16,
        max_num_seqs=PROMPTS,
        seed=0,
    )
    ids = [{"prompt_token_ids": p} for p in prompts(llm.get_tokenizer())]
    requests = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters)]
    loras = {s: [None if a is None else requests[a] for a in assignment(s)] for s in SCENARIOS}
    for scenario in SCENARIOS:  # warm-up, adapters loaded
        llm.generate(ids, sampling, lora_request=loras[scenario], use_tqdm=False)
    seconds: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for round_ in range(RUNS):
        for scenario in SCENARIOS if round_ % 2 == 0 else SCENARIOS[::-1]:
            started = time.perf_counter()
            llm.generate(ids, sampling, lora_request=loras[scenario], use_tqdm=False)
            seconds[scenario].append(time.perf_counter() - started)
    return {"tok_s": {s: PROMPTS * NEW_TOKENS / statistics.median(t) for s, t in seconds.items()}, "seconds": seconds}


def paired(rates: dict, scenario: str, reference: str) -> float:
    """`scenario`'s throughput ÷ `reference`'s: the median over rounds of the ratio within each round."""
    return statistics.median(ref / own for own, ref in zip(rates["seconds"][scenario], rates["seconds"][reference]))


def engine_subprocess(base: str, adapters: list[str], plugin: bool) -> dict:
    env = os.environ | {"RAYFT_CPU_LORA_OPS": "1" if plugin else "0"}
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_throughput as b; "
        f"print('RESULT', json.dumps(b.vllm_engine_rates({base!r}, {adapters!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"engine bench failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def peft_rates(base: str, adapters: list[str]) -> dict:
    """transformers+peft generate: one request at a time, and batches of 16 (one adapter / mixed)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.eval()
    ids = prompts(tokenizer)

    def generate(batch: list[list[int]], names: list[str]) -> None:
        width = max(len(p) for p in batch)
        inputs = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            model.generate(
                input_ids=inputs,
                attention_mask=mask,
                max_new_tokens=NEW_TOKENS,
                min_new_tokens=NEW_TOKENS,
                do_sample=False,
                adapter_names=names,
                pad_token_id=tokenizer.pad_token_id,
            )

    def batched(names_for) -> float:
        started = time.perf_counter()
        for start in range(0, PROMPTS, 16):
            generate(ids[start : start + 16], [names_for(i) for i in range(start, min(start + 16, PROMPTS))])
        return PROMPTS * NEW_TOKENS / (time.perf_counter() - started)

    single = 16  # one request at a time is slow: measure 16 of them
    started = time.perf_counter()
    for i in range(single):
        generate([ids[i]], [f"a{i % ADAPTERS}"])
    return {
        "one_at_a_time": single * NEW_TOKENS / (time.perf_counter() - started),
        "batch16_one_adapter": batched(lambda i: "a0"),
        "batch16_mixed_8": batched(lambda i: f"a{i % ADAPTERS}"),
    }


def engine_part(base: str, adapters: list[str]) -> dict:
    off = engine_subprocess(base, adapters, plugin=False)
    on = engine_subprocess(base, adapters, plugin=True)
    peft = peft_rates(base, adapters)
    return {
        "plugin_off_tok_s": off["tok_s"],
        "plugin_on_tok_s": on["tok_s"],
        "peft_tok_s": peft,
        "plugin_on_seconds_per_round": on["seconds"],
        "ratios (within each round, median over rounds)": {
            "one_adapter/base (off)": paired(off, "one_adapter", "base"),
            "one_adapter/base (on)": paired(on, "one_adapter", "base"),
            "mixed_8/one_adapter (off)": paired(off, "mixed_8", "one_adapter"),
            "mixed_8/one_adapter (on)": paired(on, "mixed_8", "one_adapter"),
        },
        "rayft mixed_8 / peft batch16 mixed (on)": on["tok_s"]["mixed_8"] / peft["batch16_mixed_8"],
    }


# ---- HTTP level: `rayft serve` in its own process, driven by 64 concurrent clients ----


def http_part(base: str, adapters: list[str], folder: Path, naive_rate: float | None) -> dict:
    import httpx

    home = folder / "home"
    env = os.environ | {"RAYFT_HOME": str(home)}
    register = "from rayft.registry import Registry; r = Registry(); " + "; ".join(
        f"r.find_by_artifact({p!r}) or r.register('a{i}', 'adapter', {base!r}, {p!r})" for i, p in enumerate(adapters)
    )
    subprocess.run([sys.executable, "-c", register], env=env, check=True)
    port = 8765
    url = f"http://127.0.0.1:{port}"
    settings = {
        "port": port,
        "max_loras": ADAPTERS,
        "max_cpu_loras": ADAPTERS,
        "max_num_seqs": PROMPTS,
        "max_model_len": 512,
        "max_concurrent_requests": 512,
    }
    # P7 on the default serving path, then everything else on a server whose ingress also answers
    # on its own port (serve.direct_port), which costs a few seconds of start-up
    server, started = _start_server(folder / "serve.yaml", base, settings, env)
    try:
        first_token_s = _wait_for_first_token(url, "base", started)
    finally:
        _stop_server(server, url)
    server, started = _start_server(folder / "serve-direct.yaml", base, settings | {"direct_port": port + 1}, env)
    try:
        first_token_direct_s = _wait_for_first_token(url, "base", started)
        from transformers import AutoTokenizer

        texts = [AutoTokenizer.from_pretrained(base).decode(p) for p in prompts(AutoTokenizer.from_pretrained(base))]
        for i in range(ADAPTERS):  # adapters loaded before timing, like the engine part's warm-up
            httpx.post(f"{url}/admin/adapters", json={"model": f"a{i}"}, timeout=300).raise_for_status()
        models = {
            "one_adapter": ["a0"] * PROMPTS,
            "mixed_8_and_base": ["base" if a is None else f"a{a}" for a in assignment("mixed_8_and_base")],
        }
        rates = {name: _http_rate(url, texts, names) for name, names in models.items()}
        latencies = _latencies(url)
        direct = _latencies(f"http://127.0.0.1:{port + 1}")  # the ingress replica's own port
    finally:
        _stop_server(server, url)
    result = {
        "start_to_first_token_s": first_token_s,
        "start_to_first_token_direct_port_s": first_token_direct_s,
        "http_tok_s": rates,
        "cache_hit_p50_ms": statistics.median(latencies["cache_hit"]) * 1000,
        "health_p50_ms": statistics.median(latencies["health"]) * 1000,
        "direct_cache_hit_p50_ms": statistics.median(direct["cache_hit"]) * 1000,
        "direct_health_p50_ms": statistics.median(direct["health"]) * 1000,
        "ratios": {"mixed_8_and_base/one_adapter (http)": rates["mixed_8_and_base"] / rates["one_adapter"]},
    }
    if naive_rate:
        result["ratios"]["rayft http mixed / peft one request at a time"] = rates["mixed_8_and_base"] / naive_rate
    return result


def _start_server(config: Path, base: str, settings: dict, env: dict) -> tuple[subprocess.Popen, float]:
    """`rayft serve` in its own process (and its own local Ray); returns it and its start time."""
    import yaml

    config.write_text(yaml.safe_dump({"name": "bench", "model": {"base": base}, "serve": settings}))
    started = time.perf_counter()
    server = subprocess.Popen(
        [sys.executable, "-m", "rayft.cli", "serve", str(config)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    return server, started


def _stop_server(server: subprocess.Popen, url: str) -> None:
    """Stop the server as Kubernetes does (SIGTERM to its main process: it drains and stops its
    Ray), its whole process group if that takes over two minutes, and wait until its port is closed."""
    import httpx

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


def _wait_for_first_token(url: str, model: str, started: float) -> float:
    import httpx

    body = {"model": model, "prompt": "Hello", "max_tokens": 1}
    while time.perf_counter() - started < 600:
        try:
            if httpx.post(f"{url}/v1/completions", json=body, timeout=30).status_code == 200:
                return time.perf_counter() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError("rayft serve gave no token within 600 s")


def _http_rate(url: str, texts: list[str], models: list[str], rounds: int = 2) -> float:
    """Output tokens/s of `rounds` × 64 completion requests, 64 in flight (one asyncio client, so the
    load generator itself takes little CPU from the server)."""
    import asyncio

    import httpx

    async def run() -> float:
        limits = httpx.Limits(max_connections=PROMPTS, max_keepalive_connections=PROMPTS)
        async with httpx.AsyncClient(limits=limits, timeout=600) as client:

            async def ask(i: int) -> int:
                body = {
                    "model": models[i % PROMPTS],
                    "prompt": texts[i % PROMPTS],
                    "max_tokens": NEW_TOKENS,
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

                return sum(await asyncio.gather(*(worker() for _ in range(PROMPTS))))

            await wave(PROMPTS)  # warm-up
            started = time.perf_counter()
            tokens = await wave(rounds * PROMPTS)
            return tokens / (time.perf_counter() - started)

    return asyncio.run(run())


def _latencies(url: str, n: int = 200) -> dict[str, list[float]]:
    """Sequential round trips: response-cache hits, and `/health` (the Serve HTTP path's floor)."""
    import httpx

    body = {"model": "a1", "prompt": "Where is my order?", "max_tokens": 16, "temperature": 0}
    times: dict[str, list[float]] = {"cache_hit": [], "health": []}
    with httpx.Client() as client:
        client.post(f"{url}/v1/completions", json=body, timeout=60).raise_for_status()  # the miss
        for _ in range(n):
            started = time.perf_counter()
            response = client.post(f"{url}/v1/completions", json=body, timeout=60)
            times["cache_hit"].append(time.perf_counter() - started)
            assert response.headers["x-rayft-cache"] == "hit"
            started = time.perf_counter()
            client.get(f"{url}/health", timeout=60).raise_for_status()
            times["health"].append(time.perf_counter() - started)
    return times


BIG_PROMPT_RATES = (5, 10)  # the hostile streams: 2 MB prompts per second, each refused


def limits_part(base: str, folder: Path) -> dict:
    """p99 latency of 300 small sequential completion requests alone, and while another client
    sends a stream of 2 MB prompts (each rate of BIG_PROMPT_RATES) that the server refuses (413, from
    their Content-Length). Each round measures quiet and every rate side by side; ratios are taken
    per round, and their median reported. For comparison, the same streams of tiny refused requests
    (400, `max_tokens: 0`): what a refusal costs whatever the size."""
    import threading

    import httpx

    env = os.environ | {"VLLM_CPU_KVCACHE_SPACE": "2", "RAYFT_HOME": str(folder / "home")}
    port = 8775
    url = f"http://127.0.0.1:{port}"
    server, started = _start_server(folder / "serve-limits.yaml", base, {"port": port, "max_model_len": 512}, env)
    refused_bodies = {
        "2mb": json.dumps({"model": "base", "prompt": "x" * 2_000_000, "max_tokens": 16}).encode(),
        "tiny": json.dumps({"model": "base", "prompt": "x", "max_tokens": 0}).encode(),
    }
    statuses: dict[str, dict[int, int]] = {name: {} for name in refused_bodies}

    def small(n: int = 300) -> list[float]:
        body = {"model": "base", "prompt": "Where is my order?", "max_tokens": 16, "temperature": 0}
        times = []
        with httpx.Client(timeout=60) as client:
            for _ in range(n):
                begun = time.perf_counter()
                client.post(f"{url}/v1/completions", json=body, headers={"x-rayft-cache": "bypass"}).raise_for_status()
                times.append(time.perf_counter() - begun)
        return times

    def stream(name: str, rate: int, stop: threading.Event) -> None:
        with httpx.Client(timeout=60) as client:
            next_at = time.perf_counter()
            while not stop.is_set():
                status = client.post(
                    f"{url}/v1/completions", content=refused_bodies[name], headers={"content-type": "application/json"}
                ).status_code
                statuses[name][status] = statuses[name].get(status, 0) + 1
                next_at += 1 / rate
                time.sleep(max(0.0, next_at - time.perf_counter()))

    def p99_beside(name: str | None, rate: int = 0) -> float:
        stop = threading.Event()
        sender = threading.Thread(target=stream, args=(name, rate, stop)) if name else None
        if sender:
            sender.start()
        times = small()
        stop.set()
        if sender:
            sender.join()
        return statistics.quantiles(times, n=100)[98]

    def refusal_seconds(streamed: bool) -> float:
        """How long a 60 MB body takes to be refused: from its Content-Length, or streamed without one
        (refused once serve.max_request_bytes are in)."""
        big = json.dumps({"model": "base", "prompt": "x" * 60_000_000, "max_tokens": 16}).encode()
        body = (big[i : i + (1 << 16)] for i in range(0, len(big), 1 << 16)) if streamed else big
        begun = time.perf_counter()
        status = httpx.post(
            f"{url}/v1/completions", content=body, headers={"content-type": "application/json"}, timeout=120
        ).status_code
        assert status == 413, status
        return time.perf_counter() - begun

    conditions = [(name, rate) for rate in BIG_PROMPT_RATES for name in refused_bodies]
    try:
        _wait_for_first_token(url, "base", started)
        small(30)  # warm-up
        one_small = statistics.median(small(20))
        refusals = {
            "60mb_declared_over_small": statistics.median(refusal_seconds(False) for _ in range(3)) / one_small,
            "60mb_streamed_over_small": statistics.median(refusal_seconds(True) for _ in range(3)) / one_small,
        }
        rounds = []
        for r in range(3):
            quiet = p99_beside(None)
            loud = {f"{name}@{rate}/s": p99_beside(name, rate) for name, rate in conditions[:: 1 if r % 2 == 0 else -1]}
            rounds.append(
                {"quiet_p99_ms": quiet * 1000}
                | {f"{k}_p99_ms": v * 1000 for k, v in loud.items()}
                | {f"ratio {k}": v / quiet for k, v in loud.items()}
            )
    finally:
        _stop_server(server, url)
    ratios = {k: statistics.median(r[k] for r in rounds) for k in rounds[0] if k.startswith("ratio")}
    return {
        "rounds": rounds,
        "refused_by_status": statuses,
        "median_ratios_p99_over_quiet": ratios,
        "refusal_time_ratios": refusals,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "engine", "http", "limits"], default="all")
    parser.add_argument("--folder", help="where the bench model and adapters are kept (default: a temp folder)")
    args = parser.parse_args()
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rayft-bench-serve-"))
    base, adapters = build_models(folder)
    result = {
        "model": "bench (hidden 512, 8 layers, fp32), 8 adapters r=16 q/k/v/o",
        "workload": f"{PROMPTS} prompts x {NEW_TOKENS} greedy tokens, ignore_eos",
    }
    if args.part in ("all", "engine"):
        result["engine"] = engine_part(base, adapters)
    if args.part in ("all", "http"):
        naive = result.get("engine", {}).get("peft_tok_s", {}).get("one_at_a_time")
        result["http"] = http_part(base, adapters, folder, naive)
    if args.part in ("all", "limits"):
        result["limits"] = limits_part(base, folder)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
