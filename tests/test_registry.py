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
    registry.set_alias("support", "live", 1)
    assert registry.get("support:live").ref == "support:1"
    assert [(v.ref, w) for v, w in registry.alias_targets("support:live")] == [("support:1", 1.0)]
    registry.set_alias("support", "canary", {2: 10, 3: 90})
    assert registry.get("support:canary").ref == "support:3"
    assert [(v.ref, w) for v, w in registry.alias_targets("support:canary")] == [
        ("support:3", 90.0),
        ("support:2", 10.0),
    ]
    registry.set_alias("support", "canary", {2: 50, 3: 50})  # a tie goes to the higher version
    assert registry.get("support:canary").ref == "support:3"
    assert registry.alias_targets("support") is None and registry.alias_targets("support:2") is None
    [canary, live] = registry.aliases("support")
    assert (canary.ref, canary.targets, canary.primary) == ("support:canary", {2: 50.0, 3: 50.0}, 3)
    assert live.to_dict()["ref"] == "support:live" and registry.aliases("other") == []
    with pytest.raises(RegistryError, match="'support:staging'"):
        registry.get("support:staging")
    with pytest.raises(RegistryError, match="'support:staging'"):
        registry.alias_targets("support:staging")


@pytest.mark.parametrize(
    "targets, message",
    [
        (9, "'support:9' is not in the registry"),
        ({1: 0}, "weight must be a number > 0"),
        ({1: -5}, "weight must be a number > 0"),
        ({1: float("nan")}, "weight must be a number > 0"),
        ({}, "non-empty"),
        ("1", "version number"),
    ],
)
def test_bad_alias_targets_are_refused_and_change_nothing(tmp_path, targets, message):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "live", 2)
    with pytest.raises(RegistryError, match=re.escape(message)):
        registry.set_alias("support", "live", targets)
    assert registry.aliases("support")[0].targets == {2: 1.0}
    assert len(registry.history("support", "live")) == 1
    with pytest.raises(RegistryError, match="an alias starts with a letter"):
        registry.set_alias("support", "9lives", 1)


def test_rollback_steps_back_through_recorded_changes(tmp_path):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "live", 1, reason="first release", actor="ana")
    with pytest.raises(RegistryError, match="no earlier state"):
        registry.rollback("support", "live")
    registry.set_alias("support", "live", 2)
    registry.set_alias("support", "live", {2: 90, 3: 10})
    assert registry.rollback("support", "live", reason="canary errors").targets == {2: 1.0}
    assert registry.get("support:live").ref == "support:2"
    assert registry.rollback("support", "live").targets == {1: 1.0}  # a second rollback goes one further back
    with pytest.raises(RegistryError, match="no earlier state"):
        registry.rollback("support", "live")
    registry.set_alias("support", "live", 3)
    assert registry.rollback("support", "live").targets == {1: 1.0}
    history = registry.history("support", "live")
    assert [c.action for c in history] == ["set", "set", "set", "rollback", "rollback", "set", "rollback"]
    assert (history[0].reason, history[0].actor, history[3].reason) == ("first release", "ana", "canary errors")
    assert [c.undoes for c in history if c.action == "rollback"] == [history[2].id, history[1].id, history[5].id]
    with pytest.raises(RegistryError, match="'support:beta' is not an alias"):
        registry.rollback("support", "beta")


def test_delete_is_refused_while_an_alias_points_to_the_version(tmp_path):
    registry = _registry_with_versions(tmp_path)
    registry.set_alias("support", "live", 1)
    registry.set_alias("support", "canary", {1: 90, 2: 10})
    with pytest.raises(RegistryError, match="alias support:canary, support:live points to it"):
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


def adapter_folder(path: Path, weights: dict | None = None, config: str = '{"r": 8}') -> Path:
    import torch
    from safetensors.torch import save_file

    path.mkdir(parents=True)
    save_file(weights or {"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}, path / "adapter_model.safetensors")
    (path / "adapter_config.json").write_text(config)
    return path


def test_weights_hash_covers_every_file_a_loader_reads(tmp_path):
    import shutil

    import torch

    from rayft.storage import content_hash

    registry = Registry(tmp_path / "r.db")
    first = registry.register("support", "adapter", "/base", str(adapter_folder(tmp_path / "a1")))
    assert first.weights_hash == content_hash(tmp_path / "a1") and len(first.weights_hash) == 64
    shutil.copytree(tmp_path / "a1", tmp_path / "a2")
    assert registry.register("support", "adapter", "/base", str(tmp_path / "a2")).weights_hash == first.weights_hash
    changed = {"lora_A": torch.ones(4, 8), "lora_B": torch.zeros(8, 4)}
    changed["lora_B"][3, 1] = 1e-3
    weights = registry.register("support", "adapter", "/base", str(adapter_folder(tmp_path / "a3", changed)))
    config = registry.register("support", "adapter", "/base", str(adapter_folder(tmp_path / "a4", config='{"r": 16}')))
    shutil.copytree(tmp_path / "a1", tmp_path / "a5")
    (tmp_path / "a5" / "chat_template.jinja").write_text("{{ messages }}")  # the template decides the prompt
    template = registry.register("support", "adapter", "/base", str(tmp_path / "a5"))
    hashes = {v.weights_hash for v in (first, weights, config, template)}
    assert len(hashes) == 4  # weights, config and chat template each make another version
    shutil.copytree(tmp_path / "a1", tmp_path / "remote")
    uri = f"file://{tmp_path / 'remote'}"
    assert content_hash(uri) == first.weights_hash  # a folder and its upload hash alike
    assert registry.register("support", "adapter", "/base", uri).weights_hash == first.weights_hash
    assert registry.get("support:1").weights_hash == first.weights_hash


def test_a_folder_holds_one_version_even_after_a_delete(tmp_path, monkeypatch):
    registry = Registry(tmp_path / "r.db")
    folder = adapter_folder(tmp_path / "a1")
    registry.register("support", "adapter", "/base", str(folder))
    monkeypatch.chdir(tmp_path)
    for spelling in (str(folder), str(folder) + "/", "a1", "./a1/../a1"):
        with pytest.raises(RegistryError, match="already holds support:1 \\(registered\\)"):
            registry.register("other", "adapter", "/base", spelling)
    registry.delete("support:1")
    with pytest.raises(RegistryError, match="already holds support:1 \\(deleted\\)"):
        registry.register("support", "adapter", "/base", str(folder))
    assert [v.ref for v in registry.list()] == []


def test_pickle_files_are_refused_naming_them(tmp_path):
    import torch

    registry = Registry(tmp_path / "r.db")
    folder = adapter_folder(tmp_path / "a1")
    torch.save({"lora_A": torch.ones(2)}, folder / "adapter_model.bin")
    (folder / "extra").mkdir()
    (folder / "extra" / "optimizer.pt").write_bytes(b"pickle")
    with pytest.raises(RegistryError, match=r"holds pickle files \(adapter_model.bin, extra/optimizer.pt\)"):
        registry.register("support", "adapter", "/base", str(folder))
    assert registry.list() == []


def test_gated_aliases_move_only_through_the_gate(tmp_path, monkeypatch):
    from rayft.registry import gated_aliases

    registry = _registry_with_versions(tmp_path, 2)
    assert gated_aliases() == ("prod",)
    with pytest.raises(RegistryError, match="'support:prod' is a gated alias.*rayft promote"):
        registry.set_alias("support", "prod", 1)
    assert registry.aliases("support") == [] and registry.history("support") == []
    registry.set_alias("support", "prod", 1, gated=True, reason="promotion gate passed")
    registry.set_alias("support", "canary", {1: 90, 2: 10})  # not gated
    registry.set_alias("support", "prod", 2, gated=True)
    assert registry.rollback("support", "prod").targets == {1: 1.0}  # a rollback needs no gate
    monkeypatch.setenv("RAYFT_GATED_ALIASES", "prod, canary")
    with pytest.raises(RegistryError, match="'support:canary' is a gated alias"):
        registry.set_alias("support", "canary", 2)
    monkeypatch.setenv("RAYFT_GATED_ALIASES", "")
    assert gated_aliases() == () and registry.set_alias("support", "prod", 2).targets == {2: 1.0}


def _move_alias_repeatedly(start, path, worker, n, done_file):
    registry = Registry(path)
    rng = random.Random(worker)
    start.wait(30)
    done = 0
    for i in range(n):
        try:
            if i % 3 == 2:
                registry.rollback("busy", "live", reason=f"w{worker}-{i}")
            else:
                registry.set_alias("busy", "live", {rng.randint(1, 4): 90, 5: 10}, actor=f"w{worker}")
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
    history = registry.history("busy", "live")
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
    assert main(["registry", "alias", "support:live", "1", "--reason", "first"]) == 0
    assert capsys.readouterr().out == "set support:live → v1\n"
    assert main(["registry", "alias", "support:canary", "2=90", "3=10", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == {"2": 90.0, "3": 10.0}
    assert main(["registry", "alias", "support:live", "2"]) == 0 and capsys.readouterr()
    assert main(["registry", "list", "--json"]) == 0
    listed = {v["ref"]: v["aliases"] for v in json.loads(capsys.readouterr().out)}
    assert listed == {"support:1": [], "support:2": ["canary (90/100)", "live"], "support:3": ["canary (10/100)"]}
    assert main(["registry", "rollback", "support:live", "--reason", "bad answers", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["targets"] == {"1": 1.0}
    assert main(["registry", "show", "support:live", "--json"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert [t["ref"] for t in shown["targets"]] == ["support:1"]
    assert [(c["action"], c["reason"]) for c in shown["history"]] == [
        ("set", "first"),
        ("set", None),
        ("rollback", "bad answers"),
    ]
    assert main(["registry", "delete", "support:1"]) == 2
    assert "alias support:live points to it" in capsys.readouterr().err
    assert main(["registry", "alias", "support:live", "2=ten"]) == 2
    assert "'2=ten'" in capsys.readouterr().err
    assert main(["registry", "delete", "support:2", "--json"]) == 2 and main(["registry", "rollback", "support"]) == 2


def test_remote_artifacts_are_cached_by_content_and_verified_before_use(tmp_path, monkeypatch):
    """A node that cached a version never serves bytes other than the registered ones: the cache is
    keyed by the weights hash, checked after download and again before each use."""
    import shutil

    from rayft.registry import verified_artifact
    from rayft.storage import ArtifactMismatch, content_hash

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path / "home"))
    registry = Registry(tmp_path / "r.db")
    bucket = adapter_folder(tmp_path / "bucket" / "a1")
    version = registry.register("support", "adapter", "/base", f"file://{bucket}")
    cached = verified_artifact(version)
    assert cached == tmp_path / "home" / "cache" / "artifacts" / version.weights_hash
    assert content_hash(cached) == version.weights_hash and verified_artifact(version) == cached
    (cached / "adapter_config.json").write_text('{"r": 64}')  # the cached copy altered on this node
    assert verified_artifact(version) == cached and content_hash(cached) == version.weights_hash  # fetched again
    (bucket / "adapter_config.json").write_text('{"r": 64}')  # the object replaced in the bucket
    shutil.rmtree(cached)  # a node that never fetched it
    with pytest.raises(
        ArtifactMismatch,
        match=f"support:1: the artifact at file://{bucket} has weights hash "
        f"{content_hash(bucket)}, but the registry records {version.weights_hash}",
    ):
        verified_artifact(version)
    assert not cached.exists() and [p.name for p in cached.parent.iterdir()] == []  # nothing half-cached
    unhashed = registry.register("legacy", "adapter", "/base", "/gone", weights_hash=None)
    with pytest.raises(ArtifactMismatch, match="legacy:1 has no weights hash"):
        verified_artifact(unhashed)
