"""Ray Train + DeepSpeed on a real local Ray with 2 workers: training, export, registration."""

import json
from pathlib import Path

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
