"""Reading training checkpoints without running code from them.

A checkpoint is a file anyone who can write the runs folder (or bucket) may have replaced. torch's
pickle-based format runs arbitrary code on load unless `weights_only=True`, and DeepSpeed's readers
(the engine's `load_checkpoint`, `zero_to_fp32`) pass `weights_only=False`. Inside
`weights_only_loads()` every `torch.load` is forced to `weights_only=True` (torch's
`TORCH_FORCE_WEIGHTS_ONLY_LOAD`), with only the few plain DeepSpeed classes its checkpoints hold
allowed besides tensors and containers.
"""

from __future__ import annotations

import os
from contextlib import contextmanager

FORCE_ENV = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"


def deepspeed_checkpoint_classes() -> list:
    """The non-tensor classes DeepSpeed writes into ZeRO and plain checkpoints: an enum, the loss
    scaler's settings and a dataclass of fragment offsets (found with
    `torch.serialization.get_unsafe_globals_in_checkpoint`)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextmanager
def weights_only_loads():
    """Every `torch.load` in the block (DeepSpeed's included) loads weights only; a checkpoint that
    holds anything else fails with torch's `UnpicklingError` naming the class."""
    import torch

    previous = os.environ.get(FORCE_ENV)
    os.environ[FORCE_ENV] = "1"
    try:
        with torch.serialization.safe_globals(deepspeed_checkpoint_classes()):
            yield
    finally:
        if previous is None:
            del os.environ[FORCE_ENV]
        else:
            os.environ[FORCE_ENV] = previous
