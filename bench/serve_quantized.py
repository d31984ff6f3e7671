"""Quantized bases (issue 31): w8a8 and w4a16 beside full precision, measured in one run
(`python bench/serve_throughput.py --part quantized`; not in `--smoke`: tests/test_quantize.py runs
the same stages on the tiny base).

Speed and memory, on the bench model (size `bench`, random weights) with 8 random adapters:
the model is registered, quantized by `rayft quantize` (round-to-nearest: calibration changes the
weights' values, not the kernels' speed), and each of full precision, w8a8 and w4a16 runs in a
process of its own on vLLM's offline engine (rayft's CPU LoRA plugin on, the dtype rayft serves it
in): resident memory after load, first-token latency of one request on one adapter (median), and
output tokens/s for one adapter and for 8 mixed, the models' rounds interleaved.

Accuracy, on the quickstart's trained models: its full fine-tune `tiny-chat` and its `support`
adapter, trained as `rayft quickstart` trains them, `tiny-chat` quantized with GPTQ calibrated on
the quickstart's train split, and `rayft eval` of each quantized version on the quickstart's test
split with `support` answering on both engines (`eval/quantized.py`).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

from serve_common import FULL, Workload, build_models, prompts

SCHEMES = ("w8a8", "w4a16")
MIXED = 8


def engine_numbers(model: str, adapters: list[str], w: Workload, dtype: str | None = None) -> dict:
    """In this process (one per model): RSS after load, first-token latency, tok/s one adapter and
    mixed; in `dtype` (default: the one rayft serves `model` in)."""
    from vllm import LLM, SamplingParams
    from vllm.lora.request import LoRARequest

    from rayft.vllm_setup import engine_dtype

    dtype = dtype or engine_dtype(model)
    started = time.perf_counter()
    llm = LLM(
        model=model,
        dtype=dtype,
        enforce_eager=True,
        max_model_len=512,
        enable_lora=True,
        max_loras=len(adapters),
        max_lora_rank=16,
        max_num_seqs=w.prompts,
        seed=0,
    )
    load_s = time.perf_counter() - started
    rss_mib = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    ids = [{"prompt_token_ids": p} for p in prompts(llm.get_tokenizer(), w.prompts)]
    loras = [LoRARequest(f"a{i}", i + 1, path) for i, path in enumerate(adapters)]
    sampling = SamplingParams(temperature=0, max_tokens=w.new_tokens, ignore_eos=True)
    first = SamplingParams(temperature=0, max_tokens=1)
    scenarios = {
        "one_adapter": [loras[0]] * len(ids),
        f"mixed_{len(loras)}": [loras[i % len(loras)] for i in range(len(ids))],
    }
    for lora in scenarios.values():  # warm-up, every adapter loaded
        llm.generate(ids, sampling, lora_request=lora, use_tqdm=False)
    first_token = []
    for _ in range(5):
        t = time.perf_counter()
        llm.generate(ids[:1], first, lora_request=loras[0], use_tqdm=False)
        first_token.append(time.perf_counter() - t)
    seconds: dict[str, list[float]] = {s: [] for s in scenarios}
    for round_ in range(w.engine_rounds):
        for name in scenarios if round_ % 2 == 0 else list(scenarios)[::-1]:
            t = time.perf_counter()
            llm.generate(ids, sampling, lora_request=scenarios[name], use_tqdm=False)
            seconds[name].append(time.perf_counter() - t)
    tokens = len(ids) * w.new_tokens
    return {
        "dtype": dtype,
        "load_s": round(load_s, 1),
        "rss_mib": round(rss_mib),
        "first_token_ms": round(statistics.median(first_token) * 1000, 1),
        "tok_s": {name: round(tokens / statistics.median(s), 1) for name, s in seconds.items()},
    }


def engine_subprocess(model: str, adapters: list[str], w: Workload, dtype: str | None = None) -> dict:
    code = (
        f"import json, sys; sys.path.insert(0, {str(Path(__file__).parent)!r}); import serve_quantized as q; "
        f"from serve_common import Workload; "
        f"print('RESULT', json.dumps(q.engine_numbers({model!r}, {adapters!r}, Workload(**{w.__dict__!r}), {dtype!r})))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=1800)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT ")]
    if not lines:
        raise RuntimeError(f"quantized engine bench failed:\n{out.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT ") :])


def quantized_versions(source_ref: str, method: str, calibration: str | None, samples: int) -> dict[str, str]:
    """{scheme: artifact} of `source_ref` quantized by `rayft quantize` (full precision under "fp32")."""
    from rayft.registry import Registry
    from rayft.training.quantize import QuantizeRequest, quantize

    paths = {"fp32": Registry().get(source_ref).artifact_uri}
    for scheme in SCHEMES:
        result = quantize(QuantizeRequest(source_ref, scheme, method, calibration, samples))
        paths[scheme] = result.version.artifact_uri
        paths[f"{scheme}_ref"] = result.version.ref
    return paths


def speed_and_memory(folder: Path, w: Workload) -> dict:
    from rayft.registry import Registry

    base, adapters = build_models(folder, w)
    registry = Registry()
    source = registry.find_by_artifact(base) or registry.register("bench-base", "full", base, base)
    paths = quantized_versions(source.ref, "rtn", None, 0)
    rounds = {name: engine_subprocess(paths[name], adapters[:MIXED], w) for name in ("fp32", *SCHEMES)}
    # the quantized models run in bfloat16 (vLLM's CPU kernels need it): full precision in bfloat16 too,
    # to tell the dtype's share of the gain from the quantization's
    rounds["bf16"] = engine_subprocess(paths["fp32"], adapters[:MIXED], w, "bfloat16")
    fp32 = rounds["fp32"]
    return {
        "model": f"{w.model} (random weights), {len(adapters[:MIXED])} adapters r=16, quantized rtn",
        "by_model": rounds,
        "ratios_over_fp32": {
            name: {
                "tok_s": {s: r["tok_s"][s] / fp32["tok_s"][s] for s in r["tok_s"]},
                "rss": r["rss_mib"] / fp32["rss_mib"],
                "first_token": r["first_token_ms"] / fp32["first_token_ms"],
            }
            for name, r in rounds.items()
            if name != "fp32"
        },
    }


def quickstart_accuracy(samples: int) -> dict:
    """The quickstart's base and adapter, trained as it trains them; each quantized version evaluated."""
    from rayft.eval.evaluate import evaluate
    from rayft.home import rayft_home
    from rayft.quickstart import build_inputs, packaged_config, prepare
    from rayft.training.trainer import train

    inputs = rayft_home() / "quickstart"  # where the quickstart's configs read their inputs
    build_inputs(inputs)
    base_config, adapter_config = packaged_config("quickstart-base.yaml"), packaged_config("quickstart.yaml")
    prepare(base_config, str(inputs / "tiny-random"))
    base = train(base_config)
    prepare(adapter_config, base.artifact_uri)
    adapter = train(adapter_config)
    paths = quantized_versions(base.ref, "gptq", adapter_config.dataset_dir(), samples)
    adapter_config.eval.quantized_adapters = [adapter.ref]
    adapter_config.eval.few_shot = 0
    found = {}
    for scheme in SCHEMES:
        report = evaluate(adapter_config, candidate=paths[f"{scheme}_ref"], show_progress=False)
        sides = report.quantization.adapters[adapter.ref]
        found[scheme] = {
            "base accuracy (source → quantized)": [report.primary("base"), report.primary("candidate")],
            "base perplexity": [
                report.metrics["base"].get("perplexity"),
                report.metrics["candidate"].get("perplexity"),
            ],
            "adapter accuracy (on source → on quantized)": [sides["source accuracy"], sides["quantized accuracy"]],
            "gate": {c.name: c.passed for c in report.verdict},
            "test records": report.n,
        }
    return {"base": base.ref, "adapter": adapter.ref, "calibration_records": samples, "by_scheme": found}


def quantized_part(folder: Path, w: Workload = FULL) -> dict:
    """Both halves, in a registry of their own under `folder`."""
    os.environ["RAYFT_HOME"] = str(folder / "quantized-home")
    return {
        "speed_and_memory": speed_and_memory(folder / "bench-model", w),
        "quickstart_accuracy": quickstart_accuracy(samples=256),
    }
