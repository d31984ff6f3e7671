"""Serving throughput: multi-LoRA on vLLM's CPU build with and without rayft's CPU LoRA ops, against
transformers+peft, and the HTTP endpoint (start-up, mixed traffic, response-cache hits).

    python bench/serve_throughput.py                 # everything (about 20 minutes on 2 cores)
    python bench/serve_throughput.py --part engine   # issue 8: ops plugin off/on, peft baselines
    python bench/serve_throughput.py --part http     # issue 5: rayft serve over HTTP; issue 30: beside
                                                     # vLLM's own OpenAI server (serve_vllm.py)
    python bench/serve_throughput.py --part http --vllm-multiprocessing  # and vLLM's server as it runs by default
    python bench/serve_throughput.py --part limits   # issue 18: small requests beside refused 2 MB ones;
                                                     # what refusing a 60 MB body costs (issue 27)
    python bench/serve_throughput.py --part structured  # issue 28: response_format json_schema (serve_structured.py)
    python bench/serve_throughput.py --part startup  # issue 30: start to first adapter token, engine core
                                                     # forked and spawned (serve_startup.py)
    python bench/serve_throughput.py --part quantized  # issue 31: w8a8 and w4a16 beside full precision:
                                                     # speed, memory, accuracy (serve_quantized.py)
    python bench/serve_throughput.py --smoke         # every part at its smallest, the HTTP ones on one server
                                                     # (make test: tests/test_bench_smoke.py); numbers mean nothing

Model: `rayft.tiny` size `bench` (hidden 512, intermediate 1376, 8 layers, 8 heads, fp32, random
weights) with 8 random LoRA adapters (r=16 on q/k/v/o). Workload: 64 prompts × 64 greedy tokens with
`ignore_eos` (`serve_common.FULL`; `--smoke`: `serve_common.SMOKE`). Every number below comes from
this one run, so the ratios compare like with like. Results are printed as JSON (and written to
`--out`); bench/RESULTS.md records them.
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
from dataclasses import asdict
from pathlib import Path

from serve_common import FULL, SMOKE, Served, Workload, build_models, http_rate, prompts, register_adapters, served
from serve_limits import limits_part
from serve_quantized import quantized_part
from serve_startup import breakdown, startup_part
from serve_structured import structured_part
from serve_vllm import Versus, versus_vllm

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

SCENARIOS = ("base", "one_adapter", "mixed_8", "mixed_8_and_base")


def assignment(scenario: str, w: Workload) -> list[int | None]:
    """Adapter index per prompt (None = base); `mixed_8` mixes all of the workload's adapters."""
    if scenario == "base":
        return [None] * w.prompts
    if scenario == "one_adapter":
        return [0] * w.prompts
    if scenario == "mixed_8":
        return [i % w.adapters for i in range(w.prompts)]
    return [None if i % (w.adapters + 1) == w.adapters else i % (w.adapters + 1) for i in range(w.prompts)]


# ---- engine level (one subprocess per plugin setting: vLLM loads plugins once per process) ----


def vllm_engine_rates(base: str, adapters: list[str], w: Workload) -> dict:
    """Per scenario on vLLM's offline engine: `tok_s`, output tokens/s at the median of the rounds,
    and `seconds`, each round's wall time. Every round runs every scenario once, in forward order in
    even rounds and in reverse in odd ones, so the machine's drift and any after-effect of the
    scenario before hit every scenario alike; ratios are then taken round by round (`paired`)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    sampling = SamplingParams(temperature=0, max_tokens=w.new_tokens, ignore_eos=True)
    llm = LLM(
        model=base,
        dtype="float32",
        enforce_eager=True,
        max_model_len=512,
        enable_lora=True,
        max_loras=w.adapters,
        max_lora_rank=16,
        max_num_seqs=w.prompts,
        seed=0,
    )
    ids = [{"prompt_token_ids": p} for p in prompts(llm.get_tokenizer(), w.prompts)]
    requests = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters)]
    loras = {s: [None if a is None else requests[a] for a in assignment(s, w)] for s in SCENARIOS}
    for scenario in SCENARIOS:  # warm-up, adapters loaded
        llm.generate(ids, sampling, lora_request=loras[scenario], use_tqdm=False)
    seconds: dict[str, list[float]] = {s: [] for s in SCENARIOS}
    for round_ in range(w.engine_rounds):
        for scenario in SCENARIOS if round_ % 2 == 0 else SCENARIOS[::-1]:
            started = time.perf_counter()
            llm.generate(ids, sampling, lora_request=loras[scenario], use_tqdm=False)
            seconds[scenario].append(time.perf_counter() - started)
    tokens = w.prompts * w.new_tokens
    return {"tok_s": {s: tokens / statistics.median(t) for s, t in seconds.items()}, "seconds": seconds}


def paired(rates: dict, scenario: str, reference: str) -> float:
    """`scenario`'s throughput ÷ `reference`'s: the median over rounds of the ratio within each round."""
    return statistics.median(ref / own for own, ref in zip(rates["seconds"][scenario], rates["seconds"][reference]))


def engine_subprocess(base: str, adapters: list[str], plugin: bool, w: Workload) -> dict:
    env = os.environ | {"RAYFT_CPU_LORA_OPS": "1" if plugin else "0"}
    workload = f"b.Workload(**{asdict(w)!r})"
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_throughput as b; "
        f"print('RESULT', json.dumps(b.vllm_engine_rates({base!r}, {adapters!r}, {workload})))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"engine bench failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def peft_rates(base: str, adapters: list[str], w: Workload) -> dict:
    """transformers+peft generate: one request at a time, and batches (one adapter / mixed)."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), adapters[0], adapter_name="a0")
    for i, path in enumerate(adapters[1:], 1):
        model.load_adapter(path, adapter_name=f"a{i}")
    model.eval()
    ids = prompts(tokenizer, w.prompts)

    def generate(batch: list[list[int]], names: list[str]) -> None:
        width = max(len(p) for p in batch)
        inputs = torch.tensor([[tokenizer.pad_token_id] * (width - len(p)) + p for p in batch])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in batch])
        with torch.no_grad():
            model.generate(
                input_ids=inputs,
                attention_mask=mask,
                max_new_tokens=w.new_tokens,
                min_new_tokens=w.new_tokens,
                do_sample=False,
                adapter_names=names,
                pad_token_id=tokenizer.pad_token_id,
            )

    def batched(names_for) -> float:
        started = time.perf_counter()
        for start in range(0, w.prompts, w.peft_batch):
            end = min(start + w.peft_batch, w.prompts)
            generate(ids[start:end], [names_for(i) for i in range(start, end)])
        return w.prompts * w.new_tokens / (time.perf_counter() - started)

    started = time.perf_counter()  # one request at a time is slow: only w.peft_single of them
    for i in range(w.peft_single):
        generate([ids[i]], [f"a{i % w.adapters}"])
    return {
        "one_at_a_time": w.peft_single * w.new_tokens / (time.perf_counter() - started),
        "batch16_one_adapter": batched(lambda i: "a0"),
        "batch16_mixed_8": batched(lambda i: f"a{i % w.adapters}"),
    }


def engine_part(base: str, adapters: list[str], w: Workload) -> dict:
    off = engine_subprocess(base, adapters, plugin=False, w=w)
    on = engine_subprocess(base, adapters, plugin=True, w=w)
    peft = peft_rates(base, adapters, w)
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


def http_settings(w: Workload) -> dict:
    return {
        "port": 8765,
        "max_loras": w.adapters,
        "max_cpu_loras": w.adapters,
        "max_num_seqs": w.prompts,
        "max_model_len": 512,
        "max_concurrent_requests": 512,
    }


def http_part(server: Served, base: str, naive_rate: float | None, w: Workload, versus: Versus) -> dict:
    """On `server` (with a direct port; its adapters registered as a0, a1, ...): mixed traffic,
    response-cache hits and `/health`, through the proxy and on the direct port; then one adapter's
    traffic beside vLLM's own OpenAI server (`serve_vllm.py`)."""
    import httpx
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(base)
    texts = [tokenizer.decode(p) for p in prompts(tokenizer, w.prompts)]
    for i in range(w.adapters):  # adapters loaded before timing, like the engine part's warm-up
        httpx.post(f"{server.url}/admin/adapters", json={"model": f"a{i}"}, timeout=300).raise_for_status()
    models = {
        "one_adapter": ["a0"] * w.prompts,
        "mixed_8_and_base": ["base" if a is None else f"a{a}" for a in assignment("mixed_8_and_base", w)],
    }
    rates = {name: http_rate(server.url, texts, names, w) for name, names in models.items()}
    latencies = _latencies(server.url, w.latency_requests)
    direct = _latencies(server.direct_url, w.latency_requests)
    result = {
        "start_to_first_token_direct_port_s": server.first_token_s,
        "http_tok_s": rates,
        "cache_hit_p50_ms": statistics.median(latencies["cache_hit"]) * 1000,
        "health_p50_ms": statistics.median(latencies["health"]) * 1000,
        "direct_cache_hit_p50_ms": statistics.median(direct["cache_hit"]) * 1000,
        "direct_health_p50_ms": statistics.median(direct["health"]) * 1000,
        "ratios": {"mixed_8_and_base/one_adapter (http)": rates["mixed_8_and_base"] / rates["one_adapter"]},
    }
    if naive_rate:
        result["ratios"]["rayft http mixed / peft one request at a time"] = rates["mixed_8_and_base"] / naive_rate
    result["versus_vllm"] = versus_vllm(server, texts, w, versus)
    side = result["versus_vllm"]["ratio_to_vllm (within each round, median over rounds)"]
    result["ratios"] |= {
        "rayft_http/vllm_http (proxy)": side["rayft_proxy"],
        "rayft_http/vllm_http (direct port)": side["rayft_direct"],
    }
    return result


def _latencies(url: str, n: int) -> dict[str, list[float]]:
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


SERVER_PARTS = ("http", "limits", "structured")


def server_parts(
    parts: list[str], base: str, adapters: list[str], folder: Path, naive: float | None, w: Workload, vllm_mp: bool
) -> dict:
    """The parts measured over HTTP, each on a `rayft serve` of its own settings (P7 first, on the
    default settings), or all on one server (`w.one_server`)."""
    env = os.environ | {"RAYFT_HOME": str(folder / "home")}
    register_adapters(base, adapters, env)
    direct = http_settings(w) | {"direct_port": 8766}
    run = {
        "http": lambda server: http_part(server, base, naive, w, Versus(base, adapters, folder, env, vllm_mp)),
        "limits": lambda server: limits_part(server, w),
        "structured": lambda server: structured_part(server, len(adapters), w),
    }
    own = {
        "http": ("serve-direct", direct),
        "limits": ("serve-limits", {"port": 8775, "max_model_len": 512}),
        "structured": (
            "serve-structured",
            {"port": 8777, "max_loras": 4, "max_num_seqs": w.prompts, "max_model_len": 512},
        ),
    }
    results = {}
    if w.one_server:
        with served(folder, "serve-all", base, direct, env) as server:
            results = {"start_to_first_token_s": server.first_token_s} | {part: run[part](server) for part in parts}
        return results | {"start_breakdown": breakdown(folder / "serve-all.log")}
    if "http" in parts:  # P7: start to first token on the default serving path
        with served(folder, "serve", base, http_settings(w), env) as server:
            results["start_to_first_token_s"] = server.first_token_s
    for part in parts:
        name, settings = own[part]
        with served(folder, name, base, settings, env) as server:
            results[part] = run[part](server)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["all", "engine", *SERVER_PARTS, "startup", "quantized"], default="all")
    parser.add_argument("--folder", help="where the bench model and adapters are kept (default: a temp folder)")
    parser.add_argument("--smoke", action="store_true", help="every part at its smallest (make test)")
    parser.add_argument("--out", help="also write the JSON here")
    parser.add_argument(
        "--vllm-multiprocessing",
        action="store_true",
        help="http part: also vLLM's server with VLLM_ENABLE_V1_MULTIPROCESSING=1, vLLM's default",
    )
    args = parser.parse_args()
    w = SMOKE if args.smoke else FULL
    folder = Path(args.folder or tempfile.mkdtemp(prefix="rayft-bench-serve-"))
    base, adapters = build_models(folder, w)
    result = {
        "model": f"{w.model} (fp32), {w.adapters} adapters r=16 q/k/v/o",
        "workload": asdict(w),
    }
    if args.part in ("all", "engine"):
        result["engine"] = engine_part(base, adapters, w)
    naive = result.get("engine", {}).get("peft_tok_s", {}).get("one_at_a_time")
    parts = [part for part in SERVER_PARTS if args.part in ("all", part)]
    if parts:
        result |= server_parts(parts, base, adapters, folder, naive, w, args.vllm_multiprocessing)
    if args.part in ("all", "startup") and w.startup_rounds:
        result["startup"] = startup_part(folder, w.startup_rounds, w.startup_sides)
    if args.part in ("all", "quantized") and not args.smoke:  # tests/test_quantize.py runs its stages
        result["quantized"] = quantized_part(folder)
    print(json.dumps(result, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
