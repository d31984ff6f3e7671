"""The SQLite registry: versions, lookups, lineage, concurrent writers."""

import multiprocessing
import random
import re
import time
from pathlib import Path

import pytest

from rayft.registry import Registry, RegistryError, current_code_revision, resolve_model_path


def test_versions_count_up_and_resolve(tmp_path):
    registry = Registry(tmp_path / "r.db")
    first = registry.register("support", "adapter", "/base", "/a1", dataset_hash="d1", metrics={"loss": 1.0})
    second = registry.register("support", "adapter", "/base", "/a2", parent=first.ref)
    assert (first.version, second.version) == (1, 2)
    assert registry.get("support").artifact_uri == "/a2"
    assert registry.get("support:1").metrics == {"loss": 1.0}
    assert registry.get("support:2").parent == "support:1"
    assert [v.ref for v in registry.list()] == ["support:1", "support:2"]


@pytest.mark.parametrize("ref", ["missing", "support:9", "support:latest"])
def test_unknown_refs_raise(tmp_path, ref):
    registry = Registry(tmp_path / "r.db")
    registry.register("support", "adapter", "/base", "/a1")
    with pytest.raises(RegistryError):
        registry.get(ref)


def test_registry_base_must_be_full_model(tmp_path):
    registry = Registry(tmp_path / "r.db")
    registry.register("chat", "full", "/random", "/chat-v1")
    registry.register("support", "adapter", "/chat-v1", "/a1")
    assert resolve_model_path("registry:chat", registry) == ("/chat-v1", "chat:1")
    assert resolve_model_path("/plain/path", registry) == ("/plain/path", None)
    with pytest.raises(RegistryError, match="is an adapter"):
        resolve_model_path("registry:support", registry)


def run_together(target, args_per_worker: list[tuple]) -> list[multiprocessing.Process]:
    """Run `target(start, *args)` in one process per args tuple; each calls `start.wait()` (a barrier)
    before its loop, so the writers start at the same moment and contend instead of running one
    after another while the others are still starting up. Returns the joined processes."""
    start = multiprocessing.Barrier(len(args_per_worker))
    workers = [multiprocessing.Process(target=target, args=(start, *args)) for args in args_per_worker]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    return workers


def pause(rng: random.Random) -> None:
    """A few ms between a writer's writes. SQLite's busy wait backs off up to 100 ms, so a writer that
    writes back to back keeps the lock while the others sleep; with pauses the writes interleave."""
    time.sleep(rng.uniform(0, 0.004))


def switches(owners: list) -> int:
    """How often consecutive writes came from different writers (n writers one after another: n - 1)."""
    return sum(a != b for a, b in zip(owners, owners[1:]))


def _register_many(start, path, worker, n):
    registry = Registry(path)
    rng = random.Random(worker)
    start.wait(30)
    for i in range(n):
        registry.register("busy", "adapter", "/base", f"/w{worker}/a{i}")
        pause(rng)


def test_concurrent_writers_get_unique_versions(tmp_path):
    path = tmp_path / "r.db"
    Registry(path)
    workers = run_together(_register_many, [(path, w, 15) for w in range(3)])
    assert all(w.exitcode == 0 for w in workers)
    versions = Registry(path).list("busy")
    assert sorted(v.version for v in versions) == list(range(1, 46))
    writers = [v.artifact_uri.split("/")[1] for v in sorted(versions, key=lambda v: v.version)]
    assert switches(writers) > 2, writers  # writes alternate between the writers: they did contend


def _registry_with_versions(tmp_path, n=3):
    registry = Registry(tmp_path / "r.db")
    for i in range(n):
        registry.register("support", "adapter", "/base", f"/a{i + 1}")
    return registry


@pytest.mark.parametrize("ref", ["bad name", ":1", "support:", "support:1a", "support:-x", "a:b:c"])
def test_malformed_refs_raise_naming_the_ref(tmp_path, ref):
    registry = _registry_with_versions(tmp_path, 1)
    with pytest.raises(RegistryError, match=re.escape(repr(ref))):
        registry.get(ref)


def test_alias_resolves_to_its_heaviest_version(tmp_path):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "prod", 1)
    assert registry.get("support:prod").ref == "support:1"
    assert [(v.ref, w) for v, w in registry.alias_targets("support:prod")] == [("support:1", 1.0)]
    registry.set_alias("support", "canary", {2: 10, 3: 90})
    assert registry.get("support:canary").ref == "support:3"
    assert [(v.ref, w) for v, w in registry.alias_targets("support:canary")] == [("support:3", 90.0), ("support:2", 10.0)]
    registry.set_alias("support", "canary", {2: 50, 3: 50})  # a tie goes to the higher version
    assert registry.get("support:canary").ref == "support:3"
    assert registry.alias_targets("support") is None and registry.alias_targets("support:2") is None
    [canary, prod] = registry.aliases("support")
    assert (canary.ref, canary.targets, canary.primary) == ("support:canary", {2: 50.0, 3: 50.0}, 3)
    assert prod.to_dict()["ref"] == "support:prod" and registry.aliases("other") == []
    with pytest.raises(RegistryError, match="'support:staging'"):
        registry.get("support:staging")
    with pytest.raises(RegistryError, match="'support:staging'"):
        registry.alias_targets("support:staging")


@pytest.mark.parametrize("targets, message", [
    (9, "'support:9' is not in the registry"),
    ({1: 0}, "weight must be a number > 0"),
    ({1: -5}, "weight must be a number > 0"),
    ({1: float("nan")}, "weight must be a number > 0"),
    ({}, "non-empty"),
    ("1", "version number"),
])
def test_bad_alias_targets_are_refused_and_change_nothing(tmp_path, targets, message):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "prod", 2)
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.set_alias("support", "prod", targets)
    assert registry.aliases("support")[0].targets == {2: 1.0}
    assert len(registry.history("support", "prod")) == 1
    with pytest.raises(RegistryError, match="an alias starts with a letter"):
        registry.set_alias("support", "9lives", 1)


def test_rollback_steps_back_through_recorded_changes(tmp_path):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "prod", 1, reason="first release", actor="ana")
    with pytest.raises(RegistryError, match="no earlier state"):
        registry.rollback("support", "prod")
    registry.set_alias("support", "prod", 2)
    registry.set_alias("support", "prod", {2: 90, 3: 10})
    assert registry.rollback("support", "prod", reason="canary errors").targets == {2: 1.0}
    assert registry.get("support:prod").ref == "support:2"
    assert registry.rollback("support", "prod").targets == {1: 1.0}  # a second rollback goes one further back
    with pytest.raises(RegistryError, match="no earlier state"):
        registry.rollback("support", "prod")
    registry.set_alias("support", "prod", 3)
    assert registry.rollback("support", "prod").targets == {1: 1.0}
    history = registry.history("support", "prod")
    assert [c.action for c in history] == ["set", "set", "set", "rollback", "rollback", "set", "rollback"]
    assert (history[0].reason, history[0].actor, history[3].reason) == ("first release", "ana", "canary errors")
    assert [c.undoes for c in history if c.action == "rollback"] == [history[2].id, history[1].id, history[5].id]
    with pytest.raises(RegistryError, match="'support:beta' is not an alias"):
        registry.rollback("support", "beta")


def test_delete_is_refused_while_an_alias_points_to_the_version(tmp_path):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "prod", 1)
    registry.set_alias("support", "canary", {1: 90, 2: 10})
    with pytest.raises(RegistryError, match="alias support:canary, support:prod points to it"):
        registry.delete("support:1")
    with pytest.raises(RegistryError, match="alias support:canary points to it"):
        registry.delete("support:2")
    with pytest.raises(RegistryError, match="exact NAME:VERSION"):
        registry.delete("support")
    assert registry.delete("support:3").artifact_uri == "/a3"
    with pytest.raises(RegistryError, match="'support:3' is not in the registry"):
        registry.get("support:3")
    assert registry.register("support", "adapter", "/base", "/a4").version == 4  # numbers are never reused
    registry.set_alias("support", "canary", 4)
    registry.delete("support:2")
    with pytest.raises(RegistryError, match="'support:2' was deleted"):
        registry.rollback("support", "canary")
    assert registry.get("support:canary").ref == "support:4"


def test_versions_record_the_code_revision(tmp_path):
    registry = Registry(tmp_path / "r.db")
    assert registry.register("support", "adapter", "/base", "/a1").code_revision == current_code_revision()
    assert current_code_revision().startswith(("git:", "rayft=="))
    assert registry.register("support", "adapter", "/b", "/a2", code_revision="git:abc").code_revision == "git:abc"


def test_content_hash_changes_when_the_weights_change(tmp_path):
    import torch
    from safetensors.torch import save_file

    from rayft.storage import content_hash

    registry = Registry(tmp_path / "r.db")
    weights = {"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}
    save_file(weights, tmp_path / "adapter_model.safetensors")
    (tmp_path / "adapter_config.json").write_text("{}")
    first = registry.register("support", "adapter", "/base", str(tmp_path))  # hashed from the folder
    assert first.weights_hash == content_hash(tmp_path) and len(first.weights_hash) == 64
    (tmp_path / "adapter_config.json").write_text('{"r": 8}')  # not weights: same hash
    assert registry.register("support", "adapter", "/base", str(tmp_path)).weights_hash == first.weights_hash
    weights["lora_B"][3, 1] = 1e-3
    save_file(weights, tmp_path / "adapter_model.safetensors")
    changed = registry.register("support", "adapter", "/base", str(tmp_path))
    assert changed.weights_hash != first.weights_hash
    assert registry.get("support:1").weights_hash == first.weights_hash
    torch.save(weights, tmp_path / "pytorch_model.bin")  # weights saved the older way count too
    assert registry.register("support", "adapter", "/base", str(tmp_path)).weights_hash != changed.weights_hash
    assert registry.register("support", "adapter", "/base", "s3://bucket/a", weights_hash="h").weights_hash == "h"


def _move_alias_repeatedly(start, path, worker, n, done_file):
    registry = Registry(path)
    rng = random.Random(worker)
    start.wait(30)
    done = 0
    for i in range(n):
        try:
            if i % 3 == 2:
                registry.rollback("busy", "prod", reason=f"w{worker}-{i}")
            else:
                registry.set_alias("busy", "prod", {rng.randint(1, 4): 90, 5: 10}, actor=f"w{worker}")
            done += 1
        except RegistryError as error:  # nothing to roll back right now: allowed, and nothing recorded
            assert "no earlier state" in str(error)
        pause(rng)
    Path(done_file).write_text(str(done))


def test_alias_moves_and_rollbacks_are_atomic_under_two_writers(tmp_path):
    path = tmp_path / "r.db"
    registry = Registry(path)
    for i in range(5):
        registry.register("busy", "adapter", "/base", f"/a{i}")
    done = [tmp_path / f"done{w}" for w in range(2)]
    workers = run_together(_move_alias_repeatedly, [(path, w, 30, done[w]) for w in range(2)])
    assert all(w.exitcode == 0 for w in workers)
    history = registry.history("busy", "prod")
    assert len(history) == sum(int(p.read_text()) for p in done)
    writers = [(c.actor or c.reason).split("-")[0] for c in history]  # a rollback's reason names its writer
    assert set(writers) == {"w0", "w1"} and switches(writers) > 1, writers  # writes alternate: they did contend
    state, by_id = None, {c.id: c for c in history}
    for change in history:  # every change starts from the state the one before left: no interleaving
        assert change.previous == state
        if change.action == "rollback":
            assert change.targets == by_id[change.undoes].previous
        state = change.targets
    undone = [c.undoes for c in history if c.undoes]
    assert len(undone) == len(set(undone))
    assert registry.aliases("busy")[0].targets == state


def test_registry_cli_moves_shows_rolls_back_and_refuses_deletes(tmp_path, monkeypatch, capsys):
    import json

    from rayft.cli import main

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path))
    registry = Registry()
    for i in range(3):
        registry.register("support", "adapter", "/base", f"/a{i + 1}")
    assert main(["registry", "alias", "support:prod", "1", "--reason", "first"]) == 0
    assert capsys.readouterr().out == "set support:prod → v1\n"
    assert main(["registry", "alias", "support:canary", "2=90", "3=10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == {"2": 90.0, "3": 10.0}
    assert main(["registry", "alias", "support:prod", "2"]) == 0 and capsys.readouterr()
    assert main(["registry", "list", "--json"]) == 0
    listed = {v["ref"]: v["aliases"] for v in json.loads(capsys.readouterr().out)}
    assert listed == {"support:1": [], "support:2": ["canary (90/100)", "prod"], "support:3": ["canary (10/100)"]}
    assert main(["registry", "rollback", "support:prod", "--reason", "bad answers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == {"1": 1.0}
    assert main(["registry", "show", "support:prod", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [t["ref"] for t in shown["targets"]] == ["support:1"]
    assert [(c["action"], c["reason"]) for c in shown["history"]] == [("set", "first"), ("set", None),
                                                                       ("rollback", "bad answers")]
    assert main(["registry", "delete", "support:1"]) == 2
    assert "alias support:prod points to it" in capsys.readouterr().err
    assert main(["registry", "alias", "support:prod", "2=ten"]) == 2
    assert "'2=ten'" in capsys.readouterr().err
    assert main(["registry", "delete", "support:2", "--json"]) == 2 and main(["registry", "rollback", "support"]) == 2
