"""DPO's reference log-probabilities computed once, before training (`train.dpo.precompute_reference`).

The frozen starting model (`model.frozen_start`) scores every tokenized pair on Ray Data, and each
row gains `ref_chosen_logps` and `ref_rejected_logps`. The workers then run the policy only: no
reference pass per step and no reference weights in their memory, for one pass over the data up
front.
"""

from __future__ import annotations

import pyarrow as pa

from rayft.config import TrainConfig


class ReferenceScorer:
    """Ray Data callable class: one frozen model per actor, scoring batches of pairs."""

    def __init__(self, base: str, train: TrainConfig, init_from: str | None, pad_id: int):
        import torch

        from rayft.training.model import frozen_start
        from rayft.training.worker import use_cpu_share

        use_cpu_share(train.cpus_per_worker)
        torch.manual_seed(train.seed)
        self.model, self.pad_id = frozen_start(base, train, init_from), pad_id

    def __call__(self, batch: pa.Table) -> pa.Table:
        import torch

        from rayft.training.dpo import sequence_logps
        from rayft.training.formatting import pair_batch
        from rayft.training.objectives import to_model_inputs

        rows = pair_batch(batch.to_pylist(), self.pad_id)
        with torch.no_grad():
            logits = self.model(**to_model_inputs(rows)).logits
        chosen, rejected = sequence_logps(logits, torch.tensor(rows.labels))[0].chunk(2)
        batch = batch.append_column("ref_chosen_logps", pa.array(chosen.tolist(), pa.float64()))
        return batch.append_column("ref_rejected_logps", pa.array(rejected.tolist(), pa.float64()))


def with_reference_logps(datasets: dict, base: str, train: TrainConfig, init_from: str | None, pad_id: int) -> dict:
    """Each split's pairs with their reference log-probs, materialised."""
    return {
        split: rows.map_batches(
            ReferenceScorer,
            fn_constructor_kwargs={"base": base, "train": train, "init_from": init_from, "pad_id": pad_id},
            batch_size=8,
            batch_format="pyarrow",
            concurrency=1,
            num_cpus=train.cpus_per_worker,
        ).materialize()
        for split, rows in datasets.items()
    }
