"""DPO and continued training on real Ray Train + DeepSpeed: a LoRA that continues the SFT adapter
(reference: its frozen copy), full fine-tuning under ZeRO-3 (reference: a frozen engine), reference
log-probs computed beforehand on Ray Data, and `train.init_from`'s lineage and refusals."""

from __future__ import annotations

import json

import pyarrow.parquet as pq
import pytest
from conftest import lora_train_config


def held_out_margins(base: str, dataset, version=None) -> list[float]:
    """log p(chosen) − log p(rejected) of every test pair, for the base with `version` (an adapter
    or a full model, as registered) or the base alone."""
    import torch
    from transformers import AutoModelForCausalLM

    from rayft.registry import verified_artifact
    from rayft.training.data import load_tokenizer
    from rayft.training.dpo import sequence_logps
    from rayft.training.formatting import pair_batch, tokenize_pair
    from rayft.training.objectives import to_model_inputs

    folder = str(verified_artifact(version)) if version else base
    if version is not None and version.kind == "adapter":
        from peft import PeftModel

        model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(base), folder)
    else:
        model = AutoModelForCausalLM.from_pretrained(folder)
    tokenizer = load_tokenizer(folder, None)
    table = pq.read_table(dataset / "test.parquet", columns=["messages", "rejected"]).to_pylist()
    strip = lambda ms: [{k: v for k, v in m.items() if v is not None} for m in ms]  # noqa: E731
    pairs = [tokenize_pair(tokenizer, strip(r["messages"]), strip(r["rejected"])[0], 256) for r in table]
    with torch.no_grad():
        batch = pair_batch(pairs, tokenizer.pad_token_id)
        logps = sequence_logps(model.eval()(**to_model_inputs(batch)).logits, torch.tensor(batch.labels))[0]
    chosen, rejected = logps.chunk(2)
    return (chosen - rejected).tolist()


def dpo_config(base: str, dataset, name: str, **train) -> dict:
    config = lora_train_config(base, dataset, name, **train)
    config["train"] = config["train"] | {"method": "dpo", "dpo": {"beta": 0.5} | train.get("dpo", {})}
    return config


def first_loss(version) -> float:
    run_log = version.metrics["run_dir"] + "/metrics.jsonl"
    return next(r["loss"] for r in map(json.loads, open(run_log)) if "loss" in r)


def test_dpo_continues_the_sft_adapter_and_raises_the_held_out_margin(
    ray_cluster, tiny_model, preference_dataset, trained_adapter
):
    from rayft.config import parse_config
    from rayft.registry import Registry
    from rayft.registry_tables import lineage
    from rayft.training.trainer import train

    config = dpo_config(
        tiny_model, preference_dataset, "support-dpo", max_steps=14, learning_rate=5e-3, init_from=trained_adapter.ref
    )
    config["train"]["lora"] = {"r": 4, "alpha": 4}  # replaced by the continued adapter's own
    version = train(parse_config(config), show_progress=False)

    assert version.parent == trained_adapter.ref and version.kind == "adapter"
    assert version.config["train"]["lora"]["r"] == trained_adapter.config["train"]["lora"]["r"]
    assert lineage(Registry(), version)[:2] == [f"{version.ref} (dpo)", f"{trained_adapter.ref} (lora)"]
    # the reference is the SFT adapter itself: at the first step policy = reference, so the loss is log 2
    assert first_loss(version) == pytest.approx(0.693147, abs=1e-4)
    before = held_out_margins(tiny_model, preference_dataset, trained_adapter)
    after = held_out_margins(tiny_model, preference_dataset, version)
    assert sum(after) / len(after) > sum(before) / len(before) + 0.2, (before, after)
    assert sum(a > 0 for a in after) >= sum(b > 0 for b in before)


def test_full_dpo_under_zero3_with_a_frozen_reference_engine(ray_cluster, tiny_model, preference_dataset):
    from rayft.config import parse_config
    from rayft.training.trainer import train

    config = dpo_config(
        tiny_model,
        preference_dataset,
        "support-dpo-full",
        max_steps=6,
        learning_rate=1e-4,
        dpo={"tune": "full"},
        deepspeed={"zero_stage": 3},
    )
    version = train(parse_config(config), show_progress=False)
    assert version.kind == "full" and version.metrics["verified_tensors"] > 0
    assert first_loss(version) == pytest.approx(0.693147, abs=1e-4)  # the frozen copy starts equal
    before, after = (
        held_out_margins(tiny_model, preference_dataset),
        held_out_margins(tiny_model, preference_dataset, version),
    )
    assert sum(after) / len(after) > sum(before) / len(before)


def test_reference_log_probs_computed_beforehand_on_ray_data(ray_cluster, tiny_model, preference_dataset):
    from rayft.config import parse_config
    from rayft.training.trainer import train

    config = dpo_config(
        tiny_model,
        preference_dataset,
        "support-dpo-pre",
        max_steps=4,
        num_workers=1,
        dpo={"precompute_reference": True, "loss": "ipo"},
    )
    version = train(parse_config(config), show_progress=False)
    # a new adapter starts as the base, which scored the pairs beforehand: IPO's loss is then 1/(2β)²
    assert first_loss(version) == pytest.approx((1 / (2 * 0.5)) ** 2, abs=1e-4)


def test_init_from_refuses_another_base_another_projects_version_and_changed_bytes(tiny_model, tmp_path):
    """Refused before any data is read or Ray starts."""
    from rayft.config import ConfigError, parse_config
    from rayft.registry import Registry
    from rayft.storage import content_hash
    from rayft.training.trainer import train

    def artifact(name: str) -> str:
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({"for": name}))
        return str(tmp_path / name)

    registry = Registry()
    folder = artifact("other")
    other = registry.register("elsewhere", "adapter", "/models/another-base", folder, weights_hash=content_hash(folder))
    folder = artifact("theirs")
    theirs = registry.register(
        "ft-teamb-x", "adapter", tiny_model, folder, weights_hash=content_hash(folder), project="teamb"
    )
    config = dpo_config(tiny_model, tmp_path / "no-data", "x", init_from=other.ref)
    with pytest.raises(ConfigError, match=r"train.init_from: elsewhere:\d+ was trained on /models/another-base"):
        train(parse_config(config), show_progress=False)
    config = dpo_config(tiny_model, tmp_path / "no-data", "x", init_from=theirs.ref) | {"project": "teama"}
    with pytest.raises(ConfigError, match=r"train.init_from: no version 'ft-teamb-x:\d+'"):
        train(parse_config(config), show_progress=False)
    # a registered version's bytes are checked before a worker reads them: changed, it is refused
    folder = artifact("mine")
    mine = registry.register("mine", "adapter", tiny_model, folder, weights_hash=content_hash(folder))
    (tmp_path / "mine" / "adapter_config.json").write_text(json.dumps({"for": "someone else"}))
    config = dpo_config(tiny_model, tmp_path / "no-data", "x", init_from=mine.ref)
    with pytest.raises(ConfigError, match=r"train.init_from: .*mine:\d+"):
        train(parse_config(config), show_progress=False)


def test_dpo_needs_a_preference_dataset(tiny_model, tickets_dataset):
    from rayft.config import ConfigError, parse_config
    from rayft.training.trainer import train

    with pytest.raises(ConfigError, match="train.method: dpo learns from preference pairs"):
        train(parse_config(dpo_config(tiny_model, tickets_dataset, "x")), show_progress=False)
