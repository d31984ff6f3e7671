"""Direct preference optimisation: the loss on a batch of preference pairs, and where the reference
log-probabilities come from.

A pair's batch holds its chosen replies first and its rejected replies after them (`pair_batch`),
each the prompt followed by the reply, learned tokens (the reply) labelled. A sequence's
log-probability is the sum of its learned tokens' log-probabilities.

    Δ = (log π(chosen) − log π_ref(chosen)) − (log π(rejected) − log π_ref(rejected))
    sigmoid: −(1−ε)·log σ(βΔ) − ε·log σ(−βΔ)      (ε: `label_smoothing`, conservative DPO)
    ipo:     (Δ/n − 1/(2β))²                      with the log-ratios averaged per reply token
    + `sft_weight` × the chosen replies' mean token negative log-likelihood

The sigmoid (ε = 0), IPO and SFT terms follow TRL's `DPOTrainer` (`loss_type` "sigmoid", "ipo",
"sft"); `tests/test_dpo.py` checks loss and gradients against it.

The reference is the model rayft started from: with a new LoRA adapter, the same model with the
adapter switched off (no second copy); when the adapter continues a registered one, a frozen copy of
that adapter named `reference`; with full fine-tuning, a frozen copy of the starting weights; or
log-probabilities computed once before training (`precompute_reference`), carried in the batch.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from rayft.config import DpoConfig
from rayft.training.formatting import IGNORE_INDEX

REFERENCE_ADAPTER = "reference"


@dataclass
class PairTerms:
    """The loss of a batch of pairs and what it says about the policy (floats are batch means)."""

    loss: object  # a scalar tensor with its graph
    reward_accuracy: float  # share of pairs whose implicit reward prefers the chosen reply
    reward_margin: float  # β·Δ
    chosen_reward: float
    rejected_reward: float


def sequence_logps(logits, labels):
    """Per sequence: the sum of the learned tokens' log-probabilities, and how many there are."""
    import torch

    labels = labels[:, 1:]
    logits = logits[:, :-1]
    mask = labels != IGNORE_INDEX
    token_logps = torch.gather(logits.log_softmax(-1), 2, labels.clamp(min=0).unsqueeze(2)).squeeze(2)
    token_logps = token_logps * mask
    return token_logps.sum(-1), mask.sum(-1), token_logps, mask


def pair_loss(logits, labels, reference_logps, dpo: DpoConfig) -> PairTerms:
    """The DPO (or IPO) loss of a [chosen; rejected] batch, given the reference's sequence log-probs
    (same order)."""
    import torch.nn.functional as F

    logps, counts, token_logps, mask = sequence_logps(logits, labels)
    chosen, rejected = logps.chunk(2)
    ref_chosen, ref_rejected = reference_logps.detach().chunk(2)
    chosen_ratio, rejected_ratio = chosen - ref_chosen, rejected - ref_rejected
    if dpo.loss == "ipo":
        chosen_count, rejected_count = counts.clamp(min=1).chunk(2)
        delta = chosen_ratio / chosen_count - rejected_ratio / rejected_count
        losses = (delta - 1 / (2 * dpo.beta)) ** 2
    else:
        delta = chosen_ratio - rejected_ratio
        smoothing = dpo.label_smoothing
        losses = -(1 - smoothing) * F.logsigmoid(dpo.beta * delta) - smoothing * F.logsigmoid(-dpo.beta * delta)
    loss = losses.mean()
    if dpo.sft_weight:
        chosen_tokens, chosen_mask = token_logps.chunk(2)[0], mask.chunk(2)[0]
        loss = loss + dpo.sft_weight * -(chosen_tokens.sum() / chosen_mask.sum().clamp(min=1))
    chosen_reward = (dpo.beta * chosen_ratio).detach()
    rejected_reward = (dpo.beta * rejected_ratio).detach()
    return PairTerms(
        loss=loss,
        reward_accuracy=float((chosen_reward > rejected_reward).float().mean()),
        reward_margin=float((chosen_reward - rejected_reward).mean()),
        chosen_reward=float(chosen_reward.mean()),
        rejected_reward=float(rejected_reward.mean()),
    )


@contextlib.contextmanager
def reference_weights(model):
    """Within the block, `model` computes as the reference: the continued adapter's frozen copy
    when there is one, else the model with its adapter switched off."""
    if REFERENCE_ADAPTER in getattr(model, "peft_config", {}):
        active = model.active_adapter
        model.set_adapter(REFERENCE_ADAPTER, inference_mode=True)  # the copy stays frozen
        try:
            yield
        finally:
            model.set_adapter(active)  # trainable again; the copy frozen
    else:
        with model.disable_adapter():
            yield


def reference_logps(module, reference, inputs: dict, labels):
    """The reference's sequence log-probs for a batch: from `reference` (a frozen model) when given,
    else from `module` itself with `reference_weights`."""
    import torch

    with torch.no_grad():
        if reference is not None:
            logits = reference(**inputs).logits
        else:
            with reference_weights(module):
                logits = module(**inputs).logits
    return sequence_logps(logits, labels)[0]
