"""Ray Train + DeepSpeed on a real local Ray with 2 workers: training, export, registration."""

import json
import os
from pathlib import Path

import pandas as pd
import pytest
import torch

pytestmark = [pytest.mark.ray, pytest.mark.timeout(900)]


def test_lora_run_lowers_loss_and_registers_lineage(trained_adapter, tickets_dataset):
    metrics = trained_adapter["metrics"]
    assert trained_adapter["kind"] == "adapter" and trained_adapter["ref"] == "support:1"
    assert metrics["steps"] == 16
    assert metrics["final_loss"] < metrics["first_loss"] - 0.05
    manifest = json.loads((tickets_dataset / "manifest.json").read_text())
    assert trained_adapter["dataset_hash"] == manifest["dataset_hash"]
    log = [json.loads(l) for l in (Path(metrics["run_dir"]) / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == list(range(1, 17))
    assert all(r["tokens_per_s"] > 0 and r["lr"] > 0 for r in log[:-1])
    assert [r["step"] for r in log if "val_loss" in r] == [8, 16]
    assert (Path(metrics["run_dir"]) / "loss.png").stat().st_size > 1000


def test_exported_adapter_loads_with_peft_and_changes_outputs(trained_adapter, tiny_model):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = Path(trained_adapter["artifact_uri"])
    assert (path / "adapter_model.safetensors").exists() and (path / "adapter_config.json").exists()
    assert (path / "chat_template.jinja").exists()  # the template used in training travels with it
    tokenizer = AutoTokenizer.from_pretrained(path)
    inputs = tokenizer.apply_chat_template([{"role": "user", "content": "My package never arrived"}],
                                           add_generation_prompt=True, return_tensors="pt", return_dict=True)
    base = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
    with torch.no_grad():
        base_logits = base(**inputs).logits
        tuned = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), path).eval()
        tuned_logits = tuned(**inputs).logits
    assert (tuned_logits - base_logits).abs().max() > 1e-3


def run_training(tiny_model, dataset, name, resume=False, **train):
    from rayft.config import parse_config
    from rayft.training.trainer import train as run

    from conftest import lora_train_config

    return run(parse_config(lora_train_config(tiny_model, dataset, name, **train)), resume=resume, show_progress=False)


def step_log(version):
    return [json.loads(l) for l in (Path(version["metrics"]["run_dir"]) / "metrics.jsonl").read_text().splitlines()]


def test_zero3_lora_and_resume_continues_steps_and_curve(ray_cluster, tiny_model, tickets_dataset):
    settings = {"deepspeed": {"zero_stage": 3}, "checkpoint_every": 3, "eval_every": 3}
    first = run_training(tiny_model, tickets_dataset, "z3lora", max_steps=6, **settings)
    assert first["metrics"]["steps"] == 6 and first["metrics"]["verified_tensors"] > 0
    first_steps = [r for r in step_log(first) if "loss" in r]
    second = run_training(tiny_model, tickets_dataset, "z3lora", resume=True, max_steps=12, **settings)
    assert second["metrics"]["run_dir"] == first["metrics"]["run_dir"]
    log = step_log(second)
    steps = [r for r in log if "loss" in r]
    assert [r["step"] for r in steps] == list(range(1, 13))
    assert steps[:6] == first_steps  # the curve continues, not restarts
    assert {"event": "resumed", "from_step": 6, "epoch": 0} in log
    assert second["parent"] == first["ref"]  # lineage: the resumed run continues the first export


def test_zero2_full_fine_tune_stops_early_on_validation_loss(ray_cluster, tiny_model, tickets_dataset):
    from transformers import AutoModelForCausalLM

    version = run_training(tiny_model, tickets_dataset, "z2full", method="full", learning_rate=3.0,
                           max_steps=30, eval_every=2, checkpoint_every=2, early_stopping_patience=2)
    metrics = version["metrics"]
    assert metrics["stopped_early"] and metrics["steps"] < 30
    vals = [r["val_loss"] for r in step_log(version) if "val_loss" in r]
    assert min(vals) < vals[-1]  # it stopped because validation loss stopped improving
    assert version["kind"] == "full" and metrics["verified_tensors"] == 21
    AutoModelForCausalLM.from_pretrained(version["artifact_uri"])  # a loadable HF folder


def test_zero3_full_export_equals_the_gathered_training_weights(ray_cluster, tiny_model, tickets_dataset):
    from safetensors.torch import load_file

    version = run_training(tiny_model, tickets_dataset, "z3full", method="full", learning_rate=1e-3,
                           deepspeed={"zero_stage": 3, "override": {"zero_optimization": {"stage3_param_persistence_threshold": 0}}},
                           max_steps=4, checkpoint_every=4, eval_every=4)
    final = Path(version["metrics"]["run_dir"]) / "step_000004" / "train_state.json"
    fingerprint = json.loads(final.read_text())["fingerprint"]  # written by the workers from gathered params
    exported = load_file(Path(version["artifact_uri"]) / "model.safetensors")
    assert set(fingerprint) <= set(exported)
    for name, (total, _) in fingerprint.items():
        assert float(exported[name].double().sum()) == pytest.approx(total, rel=1e-9, abs=1e-9), name
    base = load_file(Path(tiny_model) / "model.safetensors")
    assert any(not torch.equal(base[k], exported[k]) for k in fingerprint)  # and it did train


def test_a_worker_killed_mid_run_resumes_from_the_last_checkpoint(ray_cluster, tiny_model, tickets_dataset, monkeypatch):
    monkeypatch.setenv("RAYFT_FAULT_STEP", "5")
    version = run_training(tiny_model, tickets_dataset, "faulty", max_steps=8, checkpoint_every=3, eval_every=3)
    log = step_log(version)
    assert version["metrics"]["restarts"] == 1 and version["metrics"]["steps"] == 8
    resumed = [r for r in log if r.get("event") == "resumed"]
    assert resumed[0]["from_step"] >= 5 - 3  # at most one checkpoint interval lost
    assert [r["step"] for r in log if "loss" in r] == list(range(1, 9))


@pytest.mark.parametrize("train, words", [
    ({"method": "qlora"}, "qlora quantizes the base to 4 bits"),
    ({"lora": {"target_modules": ["q_proj", "attn_qkv"]}}, "attn_qkv not in the model"),
])
def test_bad_configs_fail_before_ray_starts(tiny_model, tmp_path, train, words):
    from rayft.config import ConfigError, parse_config
    from rayft.training.trainer import train as run

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "train.parquet").write_bytes(b"")
    from conftest import lora_train_config

    config = parse_config(lora_train_config(tiny_model, tmp_path / "data", "bad", **train))
    with pytest.raises(ConfigError, match=words):
        run(config)


def test_data_that_cannot_train_fails_before_workers_start(ray_cluster, tiny_model, tickets_dataset, tmp_path):
    from rayft.config import ConfigError, parse_config
    from rayft.training.trainer import train as run

    from conftest import lora_train_config

    with pytest.raises(ConfigError, match="larger than the data"):
        run(parse_config(lora_train_config(tiny_model, tickets_dataset, "huge", batch_size=4096)))
    empty = tmp_path / "empty"
    empty.mkdir()
    for split in ("train", "val", "test"):
        pd.DataFrame({"messages": pd.Series([], dtype=object)}).to_parquet(empty / f"{split}.parquet")
    with pytest.raises(ConfigError, match="training split is empty"):
        run(parse_config(lora_train_config(tiny_model, empty, "empty")))
    assert not (Path(os.environ["RAYFT_HOME"]) / "runs" / "huge").exists()
