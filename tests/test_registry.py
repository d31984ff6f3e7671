"""The SQLite registry: versions, lookups, lineage, concurrent writers."""

import multiprocessing

import pytest

from rayft.registry import Registry, RegistryError, resolve_model_path


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


def _register_many(path, n):
    registry = Registry(path)
    for i in range(n):
        registry.register("busy", "adapter", "/base", f"/a{i}")


def test_concurrent_writers_get_unique_versions(tmp_path):
    path = tmp_path / "r.db"
    Registry(path)
    workers = [multiprocessing.Process(target=_register_many, args=(path, 15)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(60)
    versions = [v.version for v in Registry(path).list("busy")]
    assert sorted(versions) == list(range(1, 46))
