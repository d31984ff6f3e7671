"""Ray Train + DeepSpeed on a real local Ray with 2 workers: training, export, registration."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = pytest.mark.timeout(900)  # `ray`: marked per test by conftest (the ray_cluster fixture)


def test_lora_run_lowers_loss_and_registers_lineage(trained_adapter, tickets_dataset):
    metrics = trained_adapter.metrics
    assert trained_adapter.kind == "adapter" and trained_adapter.ref == "support:1"
    assert metrics["steps"] == 16
    assert metrics["final_loss"] < metrics["first_loss"] - 0.05
    manifest = json.loads((tickets_dataset / "manifest.json").read_text())
    assert trained_adapter.dataset_hash == manifest["dataset_hash"]
    log = [json.loads(line) for line in (Path(metrics["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 and r["grad_norm"] > 0 for r in log[:-1])
    assert [r["step"] for r in log if "val_loss" in r] == [8, 16]
    assert (Path(metrics["run_dir"]) / "loss.png").stat().st_size > 1000


def test_exported_adapter_loads_with_peft_and_changes_outputs(trained_adapter, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(trained_adapter.artifact_uri)
    assert (path / "adapter_model.safetensors").exists() and (path / "adapter_config.json").exists()
    assert (path / "chat_template.jinja").exists()  # the template used in training travels with it
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer.apply_chat_template(
        [{"role": "user", "content": "My package never arrived"}],
        add_generation_prompt=True,
        return_tensors="pt",
        return_dict=True,
    )
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), path).eval()
        tuned_logits = tuned(**inputs).logits
    assert (tuned_logits - base_logits).abs().max() > 1e-3


def run_training(tiny_model, dataset, name, resume=False, chat_template=None, **train):
    from conftest import lora_train_config

    from rayft.config import parse_config
    from rayft.training.trainer import train as run

    config = lora_train_config(tiny_model, dataset, name, **train)
    config["model"]["chat_template"] = chat_template
    return run(parse_config(config), resume=resume, show_progress=False)


def tensorboard_scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Scalars by tag from TensorBoard event files (TFRecord framing: length, crc, event, crc)."""
    import struct

    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, list] = {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        data, at = path.read_bytes(), 0
        while at < len(data):
            (length,) = struct.unpack("<Q", data[at : at + 8])
            event = Event.FromString(data[at + 12 : at + 12 + length])
            at += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
    return scalars


def step_log(version):
    return [json.loads(line) for line in (Path(version.metrics["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def scheduled_lrs(name: str, base_lr: float, warmup: int, total: int) -> list[float]:
    """The learning rate after each of `total` steps of transformers' `name` schedule."""
    from transformers import get_scheduler

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=base_lr)
    scheduler = get_scheduler(name, optimizer, num_warmup_steps=warmup, num_training_steps=total)
    lrs = []
    for _ in range(total):
        optimizer.step()
        scheduler.step()
        lrs.append(scheduler.get_last_lr()[0])
    return lrs


@pytest.mark.parametrize("pairs", [False, True], ids=["chat", "preference pairs"])
def test_a_small_dataset_tokenized_in_process_gives_the_rows_ray_tasks_give(
    ray_cluster, tiny_model, tickets_dataset, preference_dataset, monkeypatch, pairs
):
    """Up to IN_PROCESS_MAX_ROWS rows are tokenized in the driver, above that as Ray tasks: the same
    rows, counts and token total either way (in any order)."""
    from rayft.training import data

    dataset = preference_dataset if pairs else tickets_dataset
    columns = data.PAIR_COLUMNS if pairs else data.SFT_COLUMNS

    def tokenized():
        splits = data.tokenized_splits(str(dataset), ["train", "val"], tiny_model, None, 256, pairs)
        rows = {s: sorted(map(repr, d.to_pandas()[columns].to_dict("records"))) for s, d in splits.datasets.items()}
        return splits.rows, splits.train_tokens, rows

    here = tokenized()
    monkeypatch.setattr(data, "IN_PROCESS_MAX_ROWS", 0)
    assert here == tokenized()
    assert here[0]["train"] > 0 and here[0]["val"] > 0 and here[1] > 0


def test_zero3_lora_packed_accumulated_and_resume_continues_steps_and_curve(ray_cluster, tiny_model, tickets_dataset):
    from templates import NO_SYSTEM

    from rayft import chat, storage

    settings = {
        "deepspeed": {"zero_stage": 3},
        "checkpoint_every": 3,
        "eval_every": 3,
        "packing": True,
        "grad_accum": 2,
        "chat_template": NO_SYSTEM,
    }
    first = run_training(tiny_model, tickets_dataset, "z3lora", max_steps=6, **settings)
    assert chat.artifact_template(first.artifact_uri) == NO_SYSTEM  # the template it trained with travels with it
    assert first.metrics["steps"] == 6 and first.metrics["verified_tensors"] > 0
    plan = first.metrics["plan"]
    assert plan["micro_batch"] * 2 * 2 == plan["global_batch"] == 8  # 2 workers × 2 accumulated micro-batches
    assert plan["steps_per_epoch"] < plan["n_train"] // plan["global_batch"]  # packed rows hold several examples
    first_steps = [r for r in step_log(first) if "loss" in r]
    second = run_training(tiny_model, tickets_dataset, "z3lora", resume=True, max_steps=12, **settings)
    assert second.metrics["run_dir"] == first.metrics["run_dir"]
    log = step_log(second)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert steps[:6] == first_steps  # the log is carried on, not restarted
    assert {"event": "resumed", "from_step": 6, "epoch": 0} in log
    # The scheduler resumed at step 7 of the re-planned 12-step schedule, not at its start...
    expected = scheduled_lrs("cosine", plan["learning_rate"], 0, 12)
    assert [r["lr"] for r in steps[6:]] == pytest.approx(expected[6:], rel=1e-6)
    # ...and the weights went on from the checkpoint: the resumed steps train below the first ones.
    mean = lambda rows: sum(r["loss"] for r in rows) / len(rows)  # noqa: E731
    assert mean(steps[6:9]) < mean(steps[:3]) and steps[-1]["loss"] < steps[0]["loss"]
    assert second.parent == first.ref  # lineage: the resumed run continues the first export
    assert second.metrics["resumed_from_step"] == 6
    # A new version in a folder of its own: the first version's bytes are as registered.
    assert Path(second.artifact_uri).parent == Path(first.artifact_uri).parent
    assert second.artifact_uri != first.artifact_uri and second.weights_hash != first.weights_hash
    assert storage.content_hash(first.artifact_uri) == first.weights_hash


def test_zero2_full_fine_tune_stops_early_on_validation_loss(ray_cluster, tiny_model, tickets_dataset, capfd):
    from transformers import AutoModelForCausalLM

    version = run_training(
        tiny_model,
        tickets_dataset,
        "z2full",
        method="full",
        learning_rate=3.0,
        tensorboard=True,
        max_steps=30,
        eval_every=2,
        checkpoint_every=2,
        early_stopping_patience=2,
        keep_checkpoints=1,
    )
    metrics = version.metrics
    assert metrics["stopped_early"] and metrics["steps"] < 30
    log = step_log(version)
    vals = [r["val_loss"] for r in log if "val_loss" in r]
    assert min(vals) < vals[-1]  # it stopped because validation loss stopped improving
    board = tensorboard_scalars(Path(metrics["run_dir"]) / "tensorboard")  # the same curves in TensorBoard
    assert board["train/loss"] == [(r["step"], pytest.approx(r["loss"])) for r in log if "loss" in r]
    assert [v for _, v in board["train/val_loss"]] == pytest.approx(vals)
    assert version.kind == "full" and metrics["verified_tensors"] == 21
    AutoModelForCausalLM.from_pretrained(version.artifact_uri)  # a loadable HF folder
    # Ray Train kept the best checkpoint by validation loss (and the latest, to resume from); the
    # best was exported.
    checkpointed = {r["step"]: r["val_loss"] for r in log if "val_loss" in r}
    best, latest = min(checkpointed, key=checkpointed.get), max(checkpointed)
    assert metrics["exported_step"] == best != latest
    kept = sorted(p.name for p in Path(metrics["run_dir"]).glob("step_*"))
    assert kept == [f"step_{best:06d}", f"step_{latest:06d}"] and len(checkpointed) > 2
    # The local cluster has no dashboard, and Ray Train's placement group cleaner, which asks the
    # dashboard about the run every second, is kept from warning each time (rayft/runtime.py).
    assert "Failed to query Ray Train Controller" not in capfd.readouterr().err


def test_one_cpu_worker_runs_without_zero_resumes_and_exports_the_training_weights(
    ray_cluster, tiny_model, tickets_dataset, capfd
):
    settings = {"method": "full", "num_workers": 1, "learning_rate": 1e-3, "checkpoint_every": 3, "eval_every": 3}
    first = run_training(tiny_model, tickets_dataset, "solo", max_steps=3, **settings)
    assert "DeepSpeed ZeRO stage 0" in capfd.readouterr().out  # one worker: nothing to partition
    saved = Path(first.metrics["run_dir"]) / "step_000003" / "ds"
    assert (saved / "mp_rank_00_model_states.pt").exists() and not list(saved.glob("*optim_states.pt"))
    second = run_training(tiny_model, tickets_dataset, "solo", resume=True, max_steps=6, **settings)
    log = step_log(second)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 7)) and {"event": "resumed", "from_step": 3, "epoch": 0} in log
    assert all(r["grad_norm"] > 0 for r in steps)  # the norm DeepSpeed's fp32 clipping computes is kept
    assert steps[-1]["loss"] < steps[0]["loss"]
    # The export came from the checkpoint's module state and was checked against the training weights.
    assert second.kind == "full" and second.metrics["verified_tensors"] == 21


@pytest.fixture(scope="module")
def z3_full_after_a_crash(ray_cluster, tiny_model, tickets_dataset):
    """A ZeRO-3 full fine-tune whose last worker crashes once at step 5 (a test hook), so Ray Train
    restarts the worker group from the step-3 checkpoint; every parameter is partitioned."""
    os.environ["RAYFT_FAULT_STEP"] = "5"
    try:
        return run_training(
            tiny_model,
            tickets_dataset,
            "z3full",
            method="full",
            learning_rate=1e-3,
            deepspeed={"zero_stage": 3, "override": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
            max_steps=8,
            checkpoint_every=3,
            eval_every=3,
        )
    finally:
        del os.environ["RAYFT_FAULT_STEP"]


def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(z3_full_after_a_crash):
    version = z3_full_after_a_crash
    log = step_log(version)
    assert version.metrics["restarts"] == 1 and version.metrics["steps"] == 8
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert resumed[0]["from_step"] >= 5 - 3  # at most one checkpoint interval lost
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))


def test_zero3_full_export_equals_the_gathered_training_weights(z3_full_after_a_crash, tiny_model, tmp_path):
    from safetensors.torch import load_file, save_file

    from rayft.training.export import ExportMismatch, verify_export
    from rayft.training.model import tensor_fingerprint

    metrics = z3_full_after_a_crash.metrics
    exported_from = Path(metrics["run_dir"]) / f"step_{metrics['exported_step']:06d}" / "train_state.json"
    fingerprint = json.loads(exported_from.read_text())["fingerprint"]  # written by the workers from gathered params
    export_dir = Path(z3_full_after_a_crash.artifact_uri)
    exported = load_file(export_dir / "model.safetensors")
    assert z3_full_after_a_crash.kind == "full" and set(fingerprint) <= set(exported)
    for name, moments in fingerprint.items():
        assert tensor_fingerprint(exported[name]) == pytest.approx(moments, rel=1e-9, abs=1e-9), name
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert any(not torch.equal(base[k], exported[k]) for k in fingerprint)  # and it did train
    # The check sees what sums cannot: the same values in another order fail it.
    name = next(k for k in fingerprint if exported[k].dim() == 2)
    exported[name] = exported[name].t().contiguous().reshape(exported[name].shape)
    save_file(exported, tmp_path / "model.safetensors")
    with pytest.raises(ExportMismatch, match=name):
        verify_export(tmp_path, fingerprint, adapter=False, rel_tol=1e-6)


@pytest.mark.parametrize(
    "rows, train, words",
    [
        (40, {"method": "qlora"}, "qlora quantizes the base to 4 bits"),
        (40, {"lora": {"target_modules": ["q_proj", "attn_qkv"]}}, "attn_qkv not in the model"),
        (0, {}, "training split is empty"),
        (40, {"batch_size": 64}, r"batch of 64 .* larger than the data \(40 examples\)"),
        (40, {"batch_size": 64, "packing": True}, "larger than the data"),
        (None, {}, "not a readable Parquet file"),
    ],
)
def test_bad_configs_fail_before_any_work(tiny_model, tmp_path, monkeypatch, rows, train, words):
    from conftest import lora_train_config

    import rayft.training.trainer as trainer
    from rayft.config import ConfigError, parse_config

    def no_work(*args, **kwargs):
        raise AssertionError("started Ray before refusing the config")

    monkeypatch.setattr(trainer, "ensure_ray", no_work)
    path = tmp_path / "data" / "train.parquet"
    path.parent.mkdir()
    (path.parent / "manifest.json").write_text("{}")
    if rows is None:
        path.write_bytes(b"not parquet")
    else:
        messages = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]] * rows
        pd.DataFrame({"messages": pd.Series(messages, dtype=object)}).to_parquet(path)
    with pytest.raises(ConfigError, match=words):
        trainer.train(parse_config(lora_train_config(tiny_model, path.parent, "bad", **train)))


def test_a_dataset_without_a_manifest_is_refused(tiny_model, tickets_dataset, tmp_path):
    """An unfinished `rayft data prepare` on object storage leaves its splits without manifest.json."""
    import shutil

    from conftest import lora_train_config

    from rayft.config import ConfigError, parse_config
    from rayft.training.trainer import check_config

    partial = shutil.copytree(tickets_dataset, tmp_path / "partial")
    (partial / "manifest.json").unlink()
    with pytest.raises(ConfigError, match="has no manifest.json, so its version is unknown"):
        check_config(parse_config(lora_train_config(tiny_model, partial, "partial")), tiny_model)


def test_checkpoints_are_read_without_running_code_from_them(tmp_path):
    """A checkpoint replaced by someone who can write the runs bucket: its pickled payload is refused,
    never executed, by the export's reader (DeepSpeed's own readers run under the same guard)."""
    import pickle

    from rayft.training.export import training_weights

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (Path.write_text, (marker, "code ran"))

    (tmp_path / "ds").mkdir()
    torch.save({"module": {"w": torch.ones(2)}, "extra": Payload()}, tmp_path / "ds" / "mp_rank_00_model_states.pt")
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        training_weights(str(tmp_path), adapter=False)
    assert not marker.exists()
    zero = tmp_path / "ds" / "zero_pp_rank_0_mp_rank_00_optim_states.pt"  # a ZeRO checkpoint: DeepSpeed's reader
    torch.save({"optimizer_state_dict": Payload()}, zero)
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        training_weights(str(tmp_path), adapter=False)
    assert not marker.exists()
    zero.unlink()
    torch.save({"module": {"w": torch.ones(2)}}, tmp_path / "ds" / "mp_rank_00_model_states.pt")
    assert torch.equal(training_weights(str(tmp_path), adapter=False)["w"], torch.ones(2))


def test_progress_tail_reads_whole_lines_and_survives_a_rewrite(tmp_path):
    from rayft.training.progress import LogTail

    path = tmp_path / "metrics.jsonl"
    tail = LogTail(path)
    assert tail.read_new() == []
    path.write_text('{"step": 1, "loss": 2.0}\n{"step": 2, "loss": 1.9}\n{"step": 3, "lo')  # step 3 half written
    assert [r["step"] for r in tail.read_new()] == [1, 2]
    with path.open("a") as log:
        log.write('ss": 1.8}\n')
    assert [r["step"] for r in tail.read_new()] == [3]
    path.write_text('{"step": 1, "loss": 2.0}\n')  # a restarted worker cut the log back to its checkpoint
    assert [r["step"] for r in tail.read_new()] == [1]


def test_a_worker_computes_on_its_cpu_share_whatever_omp_num_threads_it_inherited():
    """A cluster started from a shell that exported OMP_NUM_THREADS=2 hands it to every worker (Ray
    sets it only when unset); two such workers on two cores ran LoRA steps 4x slower."""
    code = (
        "import torch; from rayft.training.worker import use_cpu_share; "
        "print(torch.get_num_threads(), use_cpu_share(0.5), torch.get_num_threads(), use_cpu_share(3.0))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True
    )
    assert out.stdout.split() == ["2", "1", "1", "3"], out.stderr[-2000:]
