"""The GPU proof kit's training-step bench, run at tiny size on the CPU so it cannot rot between GPU
runs: every method wrapped as the worker wraps it, and the FLOPs formula of its docstring."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.timeout(300)
def test_the_gpu_training_bench_runs_at_tiny_size_on_the_cpu(tmp_path):
    out = tmp_path / "bench.json"
    subprocess.run(
        [
            sys.executable,
            "bench/gpu_train_step.py",
            "--size",
            "tiny",
            "--device",
            "cpu",
            "--warmup",
            "1",
            "--steps",
            "2",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        env=os.environ | {"PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))},
        check=True,
        timeout=240,
        capture_output=True,
    )
    report = json.loads(out.read_text())
    assert (report["device"], report["size"], report["peak_tflops"]) == ("cpu", "tiny", None)
    runs = {(r["method"], r["packing"]): r for r in report["results"]}
    assert set(runs) == {(m, p) for m in ("lora", "full", "qlora") for p in (False, True)}
    for method in ("lora", "full"):
        padded, packed = runs[(method, False)], runs[(method, True)]
        for run in (padded, packed):
            assert run["tokens_per_s"] > 0 and 0 < run["loss"] < 20 and run["mfu"] is None
        assert packed["row_width"] > padded["row_width"] and packed["tokens_per_step"] > padded["tokens_per_step"]
    assert 0 < runs[("lora", False)]["trainable_params"] < runs[("full", False)]["trainable_params"]
    # The docstring's formula, from the tiny shape: hidden 64, 2 layers, an untied 2048 × 64 embedding.
    full = runs[("full", True)]
    matmul = full["trainable_params"] - 2048 * 64
    assert full["flops_per_token"] == pytest.approx(6 * matmul + 12 * 2 * 64 * full["row_width"])
    lora = runs[("lora", True)]
    assert lora["flops_per_token"] == pytest.approx(
        4 * matmul + 6 * lora["trainable_params"] + 12 * 2 * 64 * lora["row_width"]
    )
    # No bitsandbytes (and no GPU) here: QLoRA is reported as an error, and the others still ran.
    assert "bitsandbytes" in runs[("qlora", False)]["error"]
