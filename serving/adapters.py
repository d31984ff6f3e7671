"""Which adapters an engine holds, which are answering requests, and which to drop for a new one.

vLLM keeps at most `max_cpu_loras` adapters; adding one beyond makes it drop its own least recently
used one, and removing an adapter that running requests still use pulls weights out from under
them. So the engine decides here, before it calls vLLM: a new adapter takes a free slot, or the
slot of the least recently used adapter that no request is using; when every slot is busy the
load waits for one to go idle (`serve.adapter_wait_s`), then is refused (`AllSlotsBusy`, a 503 with
Retry-After) instead of evicting. An adapter that is
replaced (its files changed) or unloaded while requests still use it is retired: it keeps its slot
until they finish, and is removed at the next load or unload after that.
"""

from __future__ import annotations

import json
from collections import Counter, OrderedDict
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


class AdapterError(ValueError):
    """An adapter that cannot be served; the message says why."""


class AllSlotsBusy(RuntimeError):
    """Every adapter slot is answering requests, so none can be freed for another adapter now."""


@dataclass
class Adapter:
    ref: str
    uri: str
    digest: str
    lora_id: int
    local: str
    chat_template: str | None = None  # stored with the artifact: the one it was trained with


def check_adapter(path: str, max_rank: int) -> None:
    """Refuse adapters vLLM cannot serve, with a message naming the problem."""
    config_path = Path(path) / "adapter_config.json"
    if not config_path.exists():
        raise AdapterError("no adapter_config.json in the adapter's artifact")
    config = json.loads(config_path.read_text())
    if config.get("r", 0) > max_rank:
        raise AdapterError(f"adapter rank {config['r']} is above the server's max_lora_rank {max_rank}")
    if config.get("modules_to_save"):
        raise AdapterError(
            f"adapters with modules_to_save ({config['modules_to_save']}) cannot be served; "
            "export the full model instead"
        )


class AdapterSlots:
    """The engine's adapter slots: an LRU of loaded adapters by ref, retired ones still in use,
    and the number of requests in flight per vLLM LoRA id. Pure bookkeeping: the engine makes the
    vLLM calls for what these methods return."""

    def __init__(self, capacity: int):
        self.capacity = capacity
        self.loaded: OrderedDict[str, Adapter] = OrderedDict()  # least recently used first
        self.retired: dict[int, Adapter] = {}
        self.busy: Counter[int] = Counter()
        self.on_idle: Callable[[], None] = lambda: None  # called when an adapter's last request ends

    def current(self, ref: str, digest: str) -> Adapter | None:
        """The loaded adapter `ref` if it has content `digest` (marked most recently used)."""
        adapter = self.loaded.get(ref)
        if adapter is None or adapter.digest != digest:
            return None
        self.loaded.move_to_end(ref)
        return adapter

    @contextmanager
    def in_use(self, adapter: Adapter | None):
        """Count one request in flight on `adapter` (None: the base) while the block runs."""
        if adapter is None:
            yield
            return
        self.hold(adapter)
        try:
            yield
        finally:
            self.release(adapter)

    def hold(self, adapter: Adapter, times: int = 1) -> None:
        """Count `times` more uses of `adapter`: it is not evicted until each is released."""
        if times > 0:
            self.busy[adapter.lora_id] += times

    def release(self, adapter: Adapter) -> None:
        """One use of `adapter` ended (`on_idle` is called when it was the last)."""
        self.busy[adapter.lora_id] -= 1
        if not self.busy[adapter.lora_id]:
            del self.busy[adapter.lora_id]
            self.on_idle()

    def make_room(self, ref: str) -> list[Adapter]:
        """Free a slot for a (new version of) `ref`: take out its old version, retired adapters no
        longer in use, and idle adapters in LRU order as needed; return those the engine must remove
        from vLLM now. Raises AllSlotsBusy, changing nothing, when requests use every other slot."""
        idle_retired = sum(a.lora_id not in self.busy for a in self.retired.values())
        old = self.loaded.get(ref)
        old_is_idle = old is not None and old.lora_id not in self.busy  # a busy old version stays, retired
        held = len(self.loaded) + len(self.retired) - idle_retired - old_is_idle
        over = held + 1 - self.capacity
        idle = [a for r, a in self.loaded.items() if r != ref and a.lora_id not in self.busy]
        if over > len(idle):
            raise AllSlotsBusy(
                f"all {self.capacity} adapter slots are answering requests "
                f"({sum(self.busy.values())} in flight); retry shortly"
            )
        evict = idle[: max(0, over)]
        gone = self._pop_idle_retired() + evict
        for adapter in evict:
            del self.loaded[adapter.ref]
        if old is not None:
            gone += self._take_out(ref)
        return gone

    def add(self, adapter: Adapter) -> None:
        """Record `adapter` as loaded (after `make_room` and vLLM's add)."""
        self.loaded[adapter.ref] = adapter

    def unload(self, ref: str) -> tuple[bool, list[Adapter]]:
        """Take `ref` out of service: (whether it was loaded, the adapters the engine must remove
        from vLLM now: it unless requests still use it, and retired ones that went idle)."""
        gone = self._pop_idle_retired()
        if ref not in self.loaded:
            return False, gone
        return True, gone + self._take_out(ref)

    def _pop_idle_retired(self) -> list[Adapter]:
        idle = [a for a in self.retired.values() if a.lora_id not in self.busy]
        for adapter in idle:
            del self.retired[adapter.lora_id]
        return idle

    def _take_out(self, ref: str) -> list[Adapter]:
        adapter = self.loaded.pop(ref)
        if adapter.lora_id in self.busy:
            self.retired[adapter.lora_id] = adapter
            return []
        return [adapter]

    def describe(self) -> list[dict]:
        """Loaded adapters, least recently used first, with their requests in flight."""
        return [
            {"ref": a.ref, "digest": a.digest, "lora_id": a.lora_id, "in_flight": self.busy[a.lora_id]}
            for a in self.loaded.values()
        ]
