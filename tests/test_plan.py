"""Resolving `auto` values and step counts before any worker starts."""

import pytest

from rayft.config import TrainConfig
from rayft.plan import PlanError, auto_batch_size, auto_epochs, make_plan


def test_auto_epochs_follow_the_documented_rule():
    assert auto_epochs(10) == 10  # small sets: at least 100 examples seen
    assert auto_epochs(1000) == 3
    assert auto_epochs(20_000) == 1  # large sets: at most 25,000 examples seen


def test_auto_batch_size_is_a_bounded_power_of_two():
    assert auto_batch_size(100) == 8
    assert auto_batch_size(3200) == 16
    assert auto_batch_size(10**6) == 64


def test_plan_counts_steps_and_rounds_batch_to_workers():
    plan = make_plan(TrainConfig(batch_size=10, epochs=2, num_workers=2, grad_accum=2), 200, 20, 8000)
    assert plan.global_batch == 12 and plan.micro_batch == 3
    assert plan.steps_per_epoch == 16 and plan.total_steps == 32
    assert plan.learning_rate == 2e-4


def test_max_steps_caps_the_run():
    plan = make_plan(TrainConfig(batch_size=8, epochs=5, max_steps=7), 400, 0, 1)
    assert plan.total_steps == 7


def test_empty_training_data_is_refused():
    with pytest.raises(PlanError, match="empty"):
        make_plan(TrainConfig(), 0, 0, 0)


def test_batch_larger_than_data_is_refused():
    with pytest.raises(PlanError, match="larger than the data"):
        make_plan(TrainConfig(batch_size=64), 40, 0, 4000)


def test_deepspeed_config_follows_the_train_section_and_the_raw_override_wins():
    from rayft.training.deepspeed_config import deepspeed_config

    train = TrainConfig.model_validate(
        {
            "grad_accum": 4,
            "max_grad_norm": 0.5,
            "deepspeed": {
                "zero_stage": 3,
                "offload_optimizer": True,
                "offload_params": True,
                "override": {"zero_optimization": {"stage3_param_persistence_threshold": 0}, "steps_per_print": 5},
            },
        }
    )
    config = deepspeed_config(train, micro_batch=2, use_gpu=False)
    zero = config["zero_optimization"]
    assert (config["train_micro_batch_size_per_gpu"], config["gradient_accumulation_steps"]) == (2, 4)
    assert config["gradient_clipping"] == 0.5 and config["bf16"] == {"enabled": False}
    assert zero["stage"] == 3 and zero["stage3_gather_16bit_weights_on_model_save"]
    assert zero["offload_optimizer"] == {"device": "cpu", "pin_memory": False} == zero["offload_param"]
    assert config["zero_force_ds_cpu_optimizer"] is False  # our torch AdamW steps the offloaded weights
    assert zero["stage3_param_persistence_threshold"] == 0 and config["steps_per_print"] == 5  # merged, not replaced
    assert "optimizer" not in config and "scheduler" not in config  # rayft passes its own
    on_gpu = deepspeed_config(TrainConfig(), micro_batch=8, use_gpu=True)
    assert on_gpu["bf16"] == {"enabled": True} and on_gpu["zero_optimization"] == {"stage": 2}
