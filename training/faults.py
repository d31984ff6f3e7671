"""Fault injection for the tests: the last worker of a run exits once, at a chosen step, so Ray Train
restarts the worker group from its last checkpoint (`RAYFT_FAULT_STEP=N`)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

FAULT_STEP_ENV = "RAYFT_FAULT_STEP"


@dataclass
class InjectedFault:
    """Exit the last rank once at `step`; `marker` records that it happened, so the restarted group
    runs through."""

    step: int
    marker: str

    @classmethod
    def from_environment(cls, scratch: Path) -> InjectedFault | None:
        step = os.environ.get(FAULT_STEP_ENV)
        return cls(int(step), str(scratch / "fault-injected")) if step else None

    def maybe_exit(self, step: int, rank: int, world: int) -> None:
        if step == self.step and rank == world - 1 and not os.path.exists(self.marker):
            Path(self.marker).write_text(f"crashed at step {step}\n")
            print(f"[rayft fault injection] rank {rank} exits at step {step}", flush=True)
            os._exit(1)
