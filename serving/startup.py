"""Where a server's start-up goes: named phases with their seconds, in order.

`rayft serve` times its own steps (Ray, Serve, the replicas, the adapters named in the config) and
each engine replica times its own (verifying the base, importing vLLM, vLLM's engine init, the
tokenizer); vLLM's engine init is split further into loading the weights and the rest (profiling,
the KV cache, warm-up), from the seconds vLLM itself logs for them.
"""

from __future__ import annotations

import logging
import time
from contextlib import contextmanager

# vLLM's own log lines that time parts of its engine init (format string -> phase name)
VLLM_TIMED = {
    "Loading weights took": "weights",
    "init engine (profile, create kv cache, warmup model) took": "KV cache and warm-up",
}


class PhaseClock:
    """Named phases and their seconds, in the order they ran."""

    def __init__(self):
        self.phases: list[tuple[str, float]] = []

    @contextmanager
    def phase(self, name: str):
        """Time the block as phase `name` (listed where it started, before parts added meanwhile)."""
        started, at = time.perf_counter(), len(self.phases)
        self.phases.append((name, 0.0))
        try:
            yield
        finally:
            self.phases[at] = (name, time.perf_counter() - started)

    def add(self, name: str, seconds: float) -> None:
        self.phases.append((name, seconds))

    def total(self) -> float:
        return sum(seconds for name, seconds in self.phases if not name.startswith("  "))


class _VllmTimings(logging.Handler):
    def __init__(self, clock: PhaseClock):
        super().__init__(logging.INFO)
        self.clock = clock

    def emit(self, record: logging.LogRecord) -> None:
        for prefix, name in VLLM_TIMED.items():
            if isinstance(record.msg, str) and record.msg.startswith(prefix) and record.args:
                self.clock.add(f"  {name}", float(record.args[0]))  # indented: a part of the phase above


@contextmanager
def vllm_phases(clock: PhaseClock):
    """While the block runs, add the parts of vLLM's engine init that vLLM logs the seconds of."""
    handler, logger = _VllmTimings(clock), logging.getLogger("vllm")
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def breakdown(phases: list[tuple[str, float]]) -> str:
    """One line per phase: '  ray                     2.6 s'; parts of a phase are indented under it,
    after it (vLLM reports them as the phase ends)."""
    return "\n".join(f"  {name:<28}{seconds:6.1f} s" for name, seconds in phases)
