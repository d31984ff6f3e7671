"""The engine's adapter loader (`serving/adapter_loader.py`) against a stand-in for vLLM's engine that
records which LoRA ids it holds: loads shared by concurrent requests, a fresh adapter held for the
requests that waited on it, and a bounded wait for a slot. Real vLLM: test_serving_fleet.py."""

from __future__ import annotations

import asyncio
import json

import pytest

from rayft import storage
from rayft.config import ServeConfig
from rayft.serving.adapter_loader import AdapterLoader
from rayft.serving.adapters import AdapterSlots, AllSlotsBusy
from rayft.serving.fleet import FleetMetrics


class StandInEngine:
    """vLLM's add_lora/remove_lora, each taking a turn of the event loop, as the real calls do."""

    def __init__(self):
        self.held: set[int] = set()
        self.adds = 0

    async def add_lora(self, request) -> None:
        await asyncio.sleep(0)
        self.held.add(request.lora_int_id)
        self.adds += 1

    async def remove_lora(self, lora_id: int) -> None:
        await asyncio.sleep(0)
        self.held.discard(lora_id)


@pytest.fixture
def artifacts(tmp_path) -> dict[str, tuple[str, str]]:
    """Five adapter folders: name → (path, content hash)."""
    found = {}
    for name in "abcde":
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text(json.dumps({"r": 8, "name": name}))
        found[name] = (str(folder), storage.content_hash(folder))
    return found


def loader_for(slots: int, wait_s: float) -> tuple[AdapterLoader, StandInEngine]:
    engine = StandInEngine()
    serve = ServeConfig(max_loras=1, max_cpu_loras=slots, adapter_wait_s=wait_s)
    return AdapterLoader(engine, serve, AdapterSlots(slots), FleetMetrics("engine-test")), engine


async def answer(loader: AdapterLoader, engine: StandInEngine, artifacts: dict, name: str, steps: int = 3) -> bool:
    """What a request does with its adapter: get it, mark it in use, and run `steps` engine steps;
    whether vLLM held the adapter at every step."""
    path, digest = artifacts[name]
    adapter = await loader.ensure(name, path, digest)
    held = True
    with loader.slots.in_use(adapter):
        for _ in range(steps):
            held &= adapter.lora_id in engine.held
            await asyncio.sleep(0)
    return held


def test_requests_for_more_adapters_than_slots_each_answer_with_their_adapter_held(artifacts):
    """Two slots, five adapters asked for at once, three requests each: every request's adapter is
    in vLLM through every step it runs (with loads finishing while other requests wait to resume,
    an adapter seen idle in between would be evicted before its requests answered)."""
    loader, engine = loader_for(slots=2, wait_s=10)

    async def scenario():
        return await asyncio.gather(*(answer(loader, engine, artifacts, n) for n in "abcde" * 3))

    assert all(asyncio.run(scenario()))
    assert len(engine.held) <= 2 and not loader.slots.busy


def test_concurrent_first_requests_share_one_load(artifacts):
    loader, engine = loader_for(slots=2, wait_s=10)

    async def scenario():
        return await asyncio.gather(*(answer(loader, engine, artifacts, "a") for _ in range(20)))

    assert all(asyncio.run(scenario())) and engine.adds == 1


def test_a_load_waits_for_a_slot_then_is_refused_after_adapter_wait_s(artifacts):
    """One slot, answering a long request: a second adapter waits, and is loaded once the slot goes
    idle; with the slot still busy after `adapter_wait_s`, it is refused and nothing was evicted."""
    loader, engine = loader_for(slots=1, wait_s=0.3)
    path, digest = artifacts["a"]

    async def scenario():
        first = await loader.ensure("a", path, digest)
        with loader.slots.in_use(first):
            with pytest.raises(AllSlotsBusy):
                await answer(loader, engine, artifacts, "b")
            assert engine.held == {first.lora_id}
            waiting = asyncio.ensure_future(answer(loader, engine, artifacts, "c"))
            await asyncio.sleep(0.1)
            assert not waiting.done()
        return await waiting  # the slot went idle at the end of the block: c took it

    assert asyncio.run(scenario())
    assert [a.ref for a in loader.slots.loaded.values()] == ["c"]
