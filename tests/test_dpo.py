"""DPO: rayft's loss and gradients against TRL's `DPOTrainer` on a fixed batch (the reference being the
same LoRA model with its adapter off, or its frozen copy when an adapter continues), and pair
tokenization that learns the final reply only."""

from __future__ import annotations

import pytest

from rayft.config import DpoConfig
from rayft.training.formatting import IGNORE_INDEX, pair_batch, tokenize_pair

PAIRS = [
    (
        [{"role": "user", "content": "password reset does not arrive"}],
        {"role": "assistant", "content": "account"},
        {"role": "assistant", "content": "billing, probably"},
    ),
    (
        [
            {"role": "system", "content": "You triage tickets."},
            {"role": "user", "content": "charged twice"},
            {"role": "assistant", "content": "Which card?"},
            {"role": "user", "content": "the visa one"},
        ],
        {"role": "assistant", "content": "billing"},
        {"role": "assistant", "content": "technical"},
    ),
]


LORA = {"r": 4, "lora_alpha": 8, "lora_dropout": 0.0, "target_modules": "all-linear"}


def base_model(base: str):
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)


def moved(model):
    """Move the trained adapter (`default`) away from where it started, the same way every time, so
    the policy differs from its reference and the loss is not log 2."""
    import torch

    generator = torch.Generator().manual_seed(7)
    for name, param in sorted(model.named_parameters()):
        if ".default." in name:
            param.data += 0.05 * torch.randn(param.shape, generator=generator)
    return model


def saved_adapter(base: str, folder) -> str:
    """An adapter as a registered version holds it: trained weights, not zeros (seeded)."""
    import torch
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(3)
    get_peft_model(base_model(base), LoraConfig(**LORA, init_lora_weights=False)).save_pretrained(folder)
    return str(folder)


def fixed_batch(base: str):
    from rayft.training.data import load_tokenizer

    tokenizer = load_tokenizer(base, None)
    pairs = [tokenize_pair(tokenizer, prompt + [chosen], rejected, 256) for prompt, chosen, rejected in PAIRS]
    return tokenizer, pair_batch(pairs, tokenizer.pad_token_id)


def loss_and_grads(model, batch, compute):
    model.zero_grad()
    loss = compute(model, batch)
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return float(loss.detach()), grads


def rayft_loss(dpo: DpoConfig):
    def compute(model, batch):
        import torch

        from rayft.training.dpo import pair_loss, reference_logps
        from rayft.training.objectives import to_model_inputs

        inputs, labels = to_model_inputs(batch), torch.tensor(batch.labels)
        return pair_loss(model(**inputs).logits, labels, reference_logps(model, None, inputs, labels), dpo).loss

    return compute


def trl_trainer(model, tokenizer, dpo: DpoConfig, tmp_path, peft_config=None):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=str(tmp_path / "trl"),
        beta=dpo.beta,
        loss_type=[dpo.loss] + (["sft"] if dpo.sft_weight else []),
        loss_weights=[1.0] + ([dpo.sft_weight] if dpo.sft_weight else []),
        report_to=[],
        use_cpu=True,
    )
    data = Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}])
    return DPOTrainer(model=model, args=args, train_dataset=data, processing_class=tokenizer, peft_config=peft_config)


def trl_loss(trainer):
    def compute(model, batch):
        import torch

        labels = torch.tensor(batch.labels)
        inputs = {
            "input_ids": torch.tensor(batch.input_ids),
            "attention_mask": torch.tensor(batch.attention_mask),
            "completion_mask": (labels != IGNORE_INDEX).long(),
        }
        return trainer._compute_loss(model, inputs, return_outputs=False)

    return compute


def assert_same(ours, theirs):
    import torch

    (our_loss, our_grads), (their_loss, their_grads) = ours, theirs
    assert our_loss == pytest.approx(their_loss, abs=1e-5)
    assert abs(our_loss - 0.693147) > 1e-3  # not log 2: the reference is not the policy itself
    assert our_grads.keys() == their_grads.keys() and our_grads
    for name, grad in our_grads.items():
        torch.testing.assert_close(grad, their_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_a_pair_learns_only_the_final_reply(tiny_model):
    tokenizer, batch = fixed_batch(tiny_model)
    n = len(PAIRS)
    for row, reply in zip(batch.labels, [c for _, c, _ in PAIRS] + [r for _, _, r in PAIRS]):
        learned = tokenizer.decode([t for t in row if t != IGNORE_INDEX])
        assert learned.startswith(reply["content"])  # the earlier assistant turn ("Which card?") is not learned
        assert "Which card" not in learned
    # chosen and rejected of a pair share their prompt tokens exactly
    for i in range(n):
        chosen, rejected = batch.input_ids[i], batch.input_ids[i + n]
        first = next(j for j, x in enumerate(batch.labels[i]) if x != IGNORE_INDEX)
        assert chosen[:first] == rejected[:first]


LOSSES = [DpoConfig(beta=0.1), DpoConfig(beta=0.5, loss="ipo"), DpoConfig(beta=0.2, sft_weight=0.5)]


@pytest.mark.parametrize("dpo", LOSSES, ids=["sigmoid", "ipo", "sigmoid+sft"])
def test_a_new_adapter_matches_trl_with_the_adapter_switched_off_as_reference(tiny_model, tmp_path, dpo):
    from peft import LoraConfig

    from rayft.config import TrainConfig
    from rayft.training.model import load_model

    tokenizer, batch = fixed_batch(tiny_model)
    train = TrainConfig(method="dpo", dpo=dpo, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    ours = load_model(tiny_model, train)
    trainer = trl_trainer(base_model(tiny_model), tokenizer, dpo, tmp_path, LoraConfig(**LORA))
    theirs = dict(trainer.model.named_parameters())
    for name, param in ours.named_parameters():  # the same random start (LoRA's A is drawn at init)
        theirs[name].data.copy_(param.data)
    theirs = moved(trainer.model)
    ours = moved(ours)
    assert_same(loss_and_grads(ours, batch, rayft_loss(dpo)), loss_and_grads(theirs, batch, trl_loss(trainer)))


@pytest.mark.parametrize("dpo", LOSSES[:1], ids=["sigmoid"])
def test_a_continued_adapter_matches_trl_with_its_frozen_copy_as_reference(tiny_model, tmp_path, dpo):
    from peft import PeftModel

    from rayft.config import TrainConfig
    from rayft.training.model import load_model

    tokenizer, batch = fixed_batch(tiny_model)
    adapter = saved_adapter(tiny_model, tmp_path / "sft")
    train = TrainConfig(method="dpo", dpo=dpo, lora={"r": 4, "alpha": 8, "dropout": 0.0})
    ours = moved(load_model(tiny_model, train, init_from=adapter))
    trainer = trl_trainer(
        PeftModel.from_pretrained(base_model(tiny_model), adapter, is_trainable=True), tokenizer, dpo, tmp_path
    )
    theirs = moved(trainer.model)
    assert_same(loss_and_grads(ours, batch, rayft_loss(dpo)), loss_and_grads(theirs, batch, trl_loss(trainer)))
