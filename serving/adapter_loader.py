"""Loading adapters into one engine's vLLM (the engine deployment's `loader`, `engine.py`).

A request for an adapter that is not loaded waits for its load; concurrent requests for the same
adapter share one. A load fetches the artifact and checks its hash on a worker thread (the disk
tier, `storage.fetch_verified`), takes a slot (`adapters.AdapterSlots`: the least recently used idle
adapter makes room), waiting up to `serve.adapter_wait_s` for one to go idle while every slot is
answering requests, and hands the adapter to vLLM; slot changes and vLLM's add and remove run one
at a time. A freshly loaded adapter is held in use for each request that waited on it until that
request resumes and marks it in use itself: in between, other loads run, and would otherwise see it
idle and evict it before it answered.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass

from rayft import chat, storage
from rayft.config import ServeConfig
from rayft.serving.adapters import Adapter, AdapterError, AdapterSlots, AllSlotsBusy, check_adapter
from rayft.serving.fleet import FleetMetrics


@dataclass
class PendingLoad:
    """One adapter's load under way, shared by the requests waiting on it."""

    future: asyncio.Future | None = None
    waiters: int = 0
    holds: int = 0  # loaded, and held in use once per waiter until each resumes


class AdapterLoader:
    """The adapters of one engine replica's vLLM `engine`, in `slots`, counted on `fleet`."""

    def __init__(self, engine, serve: ServeConfig, slots: AdapterSlots, fleet: FleetMetrics):
        self.engine, self.serve, self.slots, self.fleet = engine, serve, slots, fleet
        self.slot_idle = asyncio.Event()  # set when an adapter's last request in flight ends
        slots.on_idle = self.slot_idle.set
        self.loading = asyncio.Lock()  # one slot change and vLLM add/remove at a time
        self.pending: dict[tuple[str, str], PendingLoad] = {}
        self.cache_bytes = int(serve.adapter_cache_gb * 2**30)
        self.next_lora_id = 1

    async def ensure(self, ref: str, uri: str, digest: str) -> Adapter:
        """The loaded adapter `ref` with content `digest`, loading (or reloading) it if needed.
        Concurrent requests for an adapter that is not loaded share one load. Raises AdapterError (it
        cannot be served), ArtifactMismatch (its bytes are not the registered ones) or AllSlotsBusy
        (no slot was freed within `adapter_wait_s`). The caller must mark it in use before its next
        await: until then another load may evict it."""
        known = self.slots.current(ref, digest)
        if known is not None:
            return known
        key = (ref, digest)
        pending = self.pending.get(key)
        if pending is None or pending.future.done():  # done: loaded, then evicted already
            pending = self.pending[key] = PendingLoad()
            pending.future = asyncio.ensure_future(self._load(ref, uri, digest, pending))
            pending.future.add_done_callback(lambda _, this=pending: self._forget(key, this))
        pending.waiters += 1
        try:
            return await asyncio.shield(pending.future)  # a caller hanging up does not cancel the load
        finally:
            pending.waiters -= 1
            if pending.holds:  # the load held the adapter once per waiter: this one's hold ends here
                pending.holds -= 1
                self.slots.release(pending.future.result())

    def _forget(self, key: tuple[str, str], pending: PendingLoad) -> None:
        if self.pending.get(key) is pending:  # not a newer load of the same adapter
            del self.pending[key]

    async def _load(self, ref: str, uri: str, digest: str, pending: PendingLoad) -> Adapter:
        """Fetch and verify off the event loop (other adapters' loads and every request go on), then
        take a slot, waiting up to `adapter_wait_s` for one to go idle while all are answering, and
        hand the adapter to vLLM, one adapter at a time."""
        from vllm.lora.request import LoRARequest

        started = time.perf_counter()
        try:
            fetched = await asyncio.to_thread(storage.fetch_verified, uri, digest, ref, self.cache_bytes)
            check_adapter(str(fetched.path), self.serve.max_lora_rank)
        except storage.ArtifactMismatch:
            raise
        except Exception as error:  # AdapterError, or the artifact cannot be fetched
            raise AdapterError(f"adapter {ref!r} cannot be loaded: {error}") from None
        local = str(fetched.path)
        deadline = time.monotonic() + self.serve.adapter_wait_s
        while True:
            async with self.loading:
                try:
                    gone = self.slots.make_room(ref)
                except AllSlotsBusy:
                    if time.monotonic() >= deadline:
                        raise
                    self.slot_idle.clear()
                else:
                    await self._remove(gone)  # before adding: vLLM would evict by itself
                    adapter = Adapter(ref, uri, digest, self.next_lora_id, local, chat.artifact_template(local))
                    self.next_lora_id += 1  # ids are never reused: vLLM caches weights (and prefixes) by id
                    try:
                        await self.engine.add_lora(LoRARequest(ref, adapter.lora_id, local))
                    except Exception as error:  # vLLM raises plain exceptions for adapters it cannot use
                        raise AdapterError(f"adapter {ref!r} cannot be loaded: {error}") from None
                    self.slots.add(adapter)
                    # in use for every request waiting on it until each resumes: other loads run
                    # first, and would otherwise see it idle and evict it before it answered
                    self.slots.hold(adapter, pending.waiters)
                    pending.holds = pending.waiters
                    break
            try:  # outside the lock: the requests that free a slot need no lock to finish
                await asyncio.wait_for(self.slot_idle.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                pass  # one last look at the slots, then refuse
        self.fleet.loaded(fetched, time.perf_counter() - started, sum(a.ref != ref for a in gone))
        return adapter

    async def _remove(self, adapters: list[Adapter]) -> None:
        for adapter in adapters:
            await self.engine.remove_lora(adapter.lora_id)

    async def unload(self, ref: str) -> bool:
        """Drop `ref` from vLLM (once requests using it finish); False when it was not loaded."""
        async with self.loading:
            found, gone = self.slots.unload(ref)
            await self._remove(gone)
        return found
