"""Every bench in bench/ at its smallest (`--smoke`): the same code as the runs bench/RESULTS.md
records, in seconds instead of minutes, so a bench cannot rot between those runs. The numbers mean
nothing here and no test looks at a time; each test checks that its bench ran to the end and that
its report is whole and consistent. (And one pure check: TRL, which the training bench compares
with, stays out of rayft itself.)

Each bench runs in a process of its own under a hard timeout (on timeout the bench and every
process it started are killed), and starts its own Ray: a local one (data, training), `rayft serve`
processes (serving). So this module stops the session's Ray first and runs with the other modules
that run their own cluster, after every test on the session's Ray (conftest.run_order). One Ray
cluster at a time. The multi-node bench's training part runs in test_multinode.py, on that module's
nodes (a second three-node cluster here would cost two minutes for the same code). The benches'
own modules run inside them: train_loop.py, train_overhead.py and trl_side.py in the training
bench; serve_common.py, serve_structured.py and serve_limits.py in the serving bench, serve_common.py
in the adapter-scale bench too.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
OWN_RAY_HEAD = True  # conftest: the benches start their own Ray; do not restart the session's


@pytest.fixture(scope="module")
def no_session_ray():
    from session_ray import stop_session_ray

    stop_session_ray()


def test_no_module_of_rayft_imports_trl():
    """TRL is a dev/bench dependency (the `dev` extra), never one of rayft's."""
    importers = []
    for folder, _, files in os.walk(ROOT / "rayft", followlinks=True):  # the stages are linked in
        for name in (f for f in files if f.endswith(".py")):
            path = Path(folder) / name
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                modules = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                modules += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
                if any(m == "trl" or m.startswith("trl.") for m in modules):
                    importers.append(str(path.relative_to(ROOT)))
    assert importers == []


def run_bench(script: str, folder: Path, timeout: float, *args: str) -> dict:
    """`python bench/SCRIPT --smoke ARGS` from the repository root; its JSON report. Output goes to a
    log in `folder` (its tail is shown when the bench fails)."""
    import psutil

    report, log_path = folder / "report.json", folder / "bench.log"
    command = [sys.executable, f"bench/{script}", "--smoke", "--out", str(report), *args]
    # this checkout's rayft, whichever one the interpreter has installed
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = os.environ | {"RAYFT_HOME": str(folder / "home"), "PYTHONPATH": path}
    with log_path.open("w") as log:
        bench = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            code = bench.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # every process it started, `rayft serve` in its own session included, then the bench
            family = psutil.Process(bench.pid).children(recursive=True)
            for process in [*family, psutil.Process(bench.pid)]:
                process.kill()
            psutil.wait_procs([*family], timeout=30)
            bench.wait(timeout=30)
            code = None
    tail = log_path.read_text(errors="replace")[-6000:]
    assert code == 0, f"{script} {'timed out' if code is None else f'exited with {code}'}:\n{tail}"
    return json.loads(report.read_text())


@pytest.mark.ray
@pytest.mark.timeout(240)
def test_the_data_prep_bench_runs(no_session_ray, tmp_path):
    report = run_bench("data_prep.py", tmp_path, 200)
    assert report["records"] == 2000
    counts = report["counts"]
    assert counts["train"] > 0 and counts["val"] > 0 and counts["test"] > 0
    # the bench's ground truth lines up with the pipeline's rejects and outputs
    assert report["exact_dup_recall"] == 1.0 and report["pii_recall"] == 1.0
    assert report["near_dup_planted_above_threshold"] > 0 and 0 < report["near_dup_recall"] <= 1
    assert 0 < report["near_dup_precision"] <= 1


@pytest.mark.ray
@pytest.mark.timeout(360)
def test_the_training_bench_runs_every_part(no_session_ray, tmp_path):
    report = run_bench("train_throughput.py", tmp_path, 320)
    assert (report["model"], report["smoke"]) == ("test", True)
    padding = report["padding"]
    assert padding["packed"]["padding_fraction"] < padding["padded"]["padding_fraction"]
    assert padding["packed"]["tokens_per_s"] > 0 and padding["padded"]["tokens_per_s"] > 0
    [overhead] = report["overhead"]  # one method at smoke size: LoRA
    assert overhead["method"] == "lora" and overhead["rayft"]["tokens_per_s"] > 0 and overhead["ratio"] > 0
    [deepspeed] = report["deepspeed"]
    assert set(deepspeed["median_s"]) == {"plain", "deepspeed", "deepspeed_zero2"}
    assert deepspeed["ratio"] > 0 and deepspeed["ratio_zero2"] > 0
    rayft, trl = report["packing"]["rayft"], report["packing"]["trl"]
    # both sides keep attention inside each packed example, so the comparison is like for like
    assert rayft["isolation_gap"] < 1e-4 and trl["isolation_gap"] < 1e-4
    assert trl["trl_padding_free"] and trl["dtype"] == "torch.float32" and trl["padding_fraction"] == 0
    assert rayft["steps"] > 2 and trl["steps"] > 2 and report["packing"]["ratio_rayft_over_trl"] > 0
    dpo = report["dpo"]
    assert set(dpo["median_step_s"]) == {"dpo", "sft_same_rows", "sft_chosen_rows"}
    assert dpo["ratio_dpo_over_sft_same_rows"] > 0 and dpo["ratio_dpo_over_sft_per_pair"] > 0


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.timeout(400)
def test_the_serving_bench_runs_every_part(no_session_ray, tmp_path):
    report = run_bench("serve_throughput.py", tmp_path, 360)
    engine = report["engine"]
    for side in ("plugin_off_tok_s", "plugin_on_tok_s"):
        assert set(engine[side]) == {"base", "one_adapter", "mixed_8", "mixed_8_and_base"}
        assert all(rate > 0 for rate in engine[side].values())
    assert all(rate > 0 for rate in engine["peft_tok_s"].values())
    assert report["start_to_first_token_s"] > 0
    http = report["http"]
    assert all(rate > 0 for rate in http["http_tok_s"].values())
    assert http["cache_hit_p50_ms"] > 0 and http["direct_cache_hit_p50_ms"] > 0
    # the start-up part's fresh starts are left to the full run; its reading of a start is checked here
    assert "startup" not in report and report["start_breakdown"][0].startswith("started in")
    versus = http["versus_vllm"]  # one adapter through rayft's proxy, its direct port and vLLM's own server
    assert set(versus["tok_s"]) == {"vllm", "rayft_proxy", "rayft_direct"} and all(versus["tok_s"].values())
    assert versus["vllm_start_to_first_token_s"]["in_process"] > 0
    limits = report["limits"]
    # every hostile request was refused, each kind with its status
    assert set(limits["refused_by_status"]["2mb"]) == {"413"} and set(limits["refused_by_status"]["tiny"]) == {"400"}
    assert len(limits["rounds"]) == 1 and all(v > 0 for v in limits["median_ratios_p99_over_quiet"].values())
    structured = report["structured"]
    assert structured["models"] == ["base", "a0", "a1"] and structured["schema_answers"] == 8
    assert structured["share_valid_allowing_control_characters"] == 1.0  # the grammar holds every answer
    assert structured["ratio_tok_s_with_schema_over_without"] > 0


@pytest.mark.ray
@pytest.mark.vllm
@pytest.mark.timeout(240)
def test_the_adapter_scale_bench_answers_every_request_with_its_own_adapter(no_session_ray, tmp_path):
    report = run_bench("adapter_scale.py", tmp_path, 200)
    scale = report["scale"]
    assert (scale["n"], scale["max_cpu_loras"]) == (12, 4)  # more adapters than the server keeps
    # answered, or refused because every adapter slot had requests in flight: never failed
    assert set(report["by_status"]) <= {"200", "503 adapter_slots_busy"} and report["client_failures"] == 0
    answered = report["by_status"]["200"]
    assert answered > 0 and report["answers_checked"] == answered
    assert report["wrong_answers"] == 0
    # the check has teeth: the adapters asked for answer differently from each other
    assert report["distinct_expected_answers"] > 1 and report["adapters_answered"] > scale["max_cpu_loras"]
    server = report["server"]
    assert server["metrics_missing"] == []
    # every adapter was loaded once at least, from storage or the disk tier; some were loaded again
    assert sum(server["loads"].values()) >= report["adapters_answered"]
    assert server["first_token"]["cold"]["count"] > 0 and server["first_token"]["warm"]["count"] > 0
    assert server["first_token"]["cold"]["count"] + server["first_token"]["warm"]["count"] == answered
    memory = report["engine_memory"]
    assert memory["cycles"] == 20 and memory["failed_cycles"] == 0 and memory["rss_before_mb"] > 0
    goals = {"no_5xx", "no_wrong_answers", "cold_p95_within_3x_warm", "rss_growth_under_5_percent"}
    assert set(report["goals"]) == goals
