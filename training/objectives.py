"""What a training step minimises, for the worker loop (`worker.py`): supervised next-token loss on
the learned turns (`Supervised`), or DPO on preference pairs (`Preference`, `dpo.py`).

Each objective turns a worker's Ray Data shard into micro-batches, computes a micro-batch's loss
and step statistics, and measures a validation split. The loop around them (DeepSpeed steps,
checkpoints, early stopping, all ranks in step) is the same for both.
"""

from __future__ import annotations

from rayft.config import TrainConfig
from rayft.training.formatting import IGNORE_INDEX, Batch, pack_examples, packed_batch, pad_batch, pair_batch


def all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return tensor.tolist()


def synced(batches):
    """Yield batches while every rank still has one; stop on all ranks together."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if all_reduce([0.0 if batch is None else 1.0], op="min")[0] == 0.0:
            return
        yield batch


def to_model_inputs(batch: Batch) -> dict:
    import torch

    inputs = {
        "input_ids": torch.tensor(batch.input_ids),
        "position_ids": torch.tensor(batch.position_ids),
        "use_cache": False,  # required for packed rows to stay isolated (formatting.py)
    }
    if batch.attention_mask is not None:
        inputs["attention_mask"] = torch.tensor(batch.attention_mask)
    return inputs


def learned_tokens(batch: Batch) -> int:
    return int(sum(1 for row in batch.labels for x in row[1:] if x != IGNORE_INDEX))


def _rows(shard, chunk: int, seed: int):
    return shard.iter_batches(
        batch_size=chunk,
        batch_format="numpy",
        local_shuffle_buffer_size=max(64, 4 * chunk),
        local_shuffle_seed=seed,
        drop_last=False,
    )


class Supervised:
    """Next-token loss on the learned tokens; rows padded, or packed with restarting positions."""

    def __init__(self, train: TrainConfig, pad_id: int):
        self.train, self.pad_id = train, pad_id

    def micro_batches(self, shard, micro: int, seed: int):
        chunk = micro * 16 if self.train.packing else micro
        for batch in _rows(shard, chunk, seed):
            examples = [
                {"input_ids": list(i), "labels": list(lb)} for i, lb in zip(batch["input_ids"], batch["labels"])
            ]
            if not self.train.packing:
                yield pad_batch(examples, self.pad_id)
                continue
            packed = pack_examples(examples, self.train.max_seq_len)
            for i in range(0, len(packed), micro):
                yield packed_batch(packed[i : i + micro], self.pad_id)

    def loss(self, engine, batch: Batch) -> tuple[object, dict]:
        import torch

        loss = engine(**to_model_inputs(batch), labels=torch.tensor(batch.labels)).loss
        return loss, {"loss": loss.item()}

    def validate(self, engine, shard, micro: int) -> dict:
        """Token-weighted mean loss over the whole split (all ranks together)."""
        import torch

        total, count = 0.0, 0
        with torch.no_grad():
            for batch in synced(self.micro_batches(shard, micro, seed=0)):
                n = learned_tokens(batch)
                total += float(engine(**to_model_inputs(batch), labels=torch.tensor(batch.labels)).loss) * n
                count += n
        total, count = all_reduce([total, float(count)])
        return {"val_loss": total / count} if count else {}


class Preference:
    """DPO on pairs (`dpo.py`): each micro-batch is `micro` pairs, chosen rows then rejected rows.
    `reference`: a frozen model for full fine-tuning; None with LoRA (the adapter is switched off or
    swapped for its frozen copy) or when the batches carry precomputed reference log-probs."""

    def __init__(self, train: TrainConfig, pad_id: int, reference=None):
        self.train, self.pad_id, self.reference = train, pad_id, reference

    def micro_batches(self, shard, micro: int, seed: int):
        for batch in _rows(shard, micro, seed):
            yield pair_batch([dict(zip(batch, values)) for values in zip(*batch.values())], self.pad_id)

    def terms(self, engine, batch: Batch):
        import torch

        from rayft.training.dpo import pair_loss, reference_logps

        inputs, labels = to_model_inputs(batch), torch.tensor(batch.labels)
        if batch.reference_logps is not None:
            reference = torch.tensor(batch.reference_logps, dtype=torch.float32)
        else:
            reference = reference_logps(engine.module, self.reference, inputs, labels)
        return pair_loss(engine(**inputs).logits.float(), labels, reference, self.train.dpo)

    def loss(self, engine, batch: Batch) -> tuple[object, dict]:
        terms = self.terms(engine, batch)
        return terms.loss, {
            "loss": terms.loss.item(),
            "reward_accuracy": terms.reward_accuracy,
            "reward_margin": terms.reward_margin,
        }

    def validate(self, engine, shard, micro: int) -> dict:
        """Pair-weighted mean loss, reward accuracy and margin over the whole split (all ranks)."""
        import torch

        loss = accuracy = margin = pairs = 0.0
        with torch.no_grad():
            for batch in synced(self.micro_batches(shard, micro, seed=0)):
                n = len(batch.input_ids) // 2
                terms = self.terms(engine, batch)
                loss += float(terms.loss) * n
                accuracy += terms.reward_accuracy * n
                margin += terms.reward_margin * n
                pairs += n
        loss, accuracy, margin, pairs = all_reduce([loss, accuracy, margin, pairs])
        if not pairs:
            return {}
        return {"val_loss": loss / pairs, "val_reward_accuracy": accuracy / pairs, "val_reward_margin": margin / pairs}


def objective_for(train: TrainConfig, pad_id: int, reference=None):
    return Preference(train, pad_id, reference) if train.objective == "dpo" else Supervised(train, pad_id)
