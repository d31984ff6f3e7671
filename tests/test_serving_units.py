"""Serving's pure parts, without Ray: traffic splits, cache keys, adapter hashes, adapter slots, keys,
metrics across replicas, options from config."""

import os
import subprocess
import sys

import pytest

from rayft.config import ConfigError, ServeConfig, parse_config
from rayft.registry import ModelVersion
from rayft.serving.adapters import Adapter, AdapterSlots, AllSlotsBusy
from rayft.serving.auth import KeyCheck, bearer_key
from rayft.serving.cache import ArtifactHashes, CachedAnswer, ResponseCache, cache_key, deterministic, tenant_of
from rayft.serving.errors import ApiError
from rayft.serving.routing import default_base_name, pick_weighted, sticky_fraction


def version(n: int) -> ModelVersion:
    return ModelVersion(name="m", version=n, kind="adapter", base_model="/b", artifact_uri=f"/a{n}")


def test_weighted_pick_follows_the_weights():
    targets = [(version(2), 10.0), (version(1), 90.0)]
    assert pick_weighted(targets, 0.0).version == 1
    assert pick_weighted(targets, 0.899).version == 1
    assert pick_weighted(targets, 0.9).version == 2
    assert pick_weighted(targets, 0.999).version == 2


def test_sticky_fraction_is_stable_per_user_and_spread_over_users():
    assert sticky_fraction("m:canary", "alice") == sticky_fraction("m:canary", "alice")
    values = [sticky_fraction("m:canary", f"user-{i}") for i in range(2000)]
    assert all(0 <= v < 1 for v in values)
    assert 0.45 < sum(v < 0.5 for v in values) / len(values) < 0.55


def test_base_name_is_never_a_path(tmp_path):
    (tmp_path / "llama-tiny").mkdir()
    assert default_base_name(str(tmp_path / "llama-tiny"), None) == "llama-tiny"
    assert default_base_name("meta-llama/Llama-3.2-1B", None) == "meta-llama/Llama-3.2-1B"
    assert default_base_name("/x/models/chat-v3", "chat:3") == "chat"


def test_cache_keys_follow_tenant_version_weights_route_and_output_fields():
    body = {"model": "a", "messages": [{"role": "user", "content": "hi"}], "temperature": 0, "user": "u1"}
    key = cache_key("t1", "a:1", "w1", "chat", body)
    assert cache_key("t1", "a:1", "w1", "chat", body | {"user": "u2", "model": "a:prod"}) == key
    assert cache_key("t2", "a:1", "w1", "chat", body) != key  # another tenant
    assert cache_key("t1", "a:1", "w2", "chat", body) != key  # other weights
    assert cache_key("t1", "b:1", "w1", "chat", body) != key  # another version, even with the same weights hash
    assert cache_key("t1", "a:1", "w1", "completion", body) != key
    assert cache_key("t1", "a:1", "w1", "chat", body | {"max_tokens": 5}) != key
    assert tenant_of("key-1") != tenant_of("key-2") and "key-1" not in tenant_of("key-1")
    assert deterministic(body) and deterministic({"temperature": 1, "seed": 3}) and not deterministic({})


def test_response_cache_is_a_bounded_lru():
    def answer(n):
        return CachedAnswer(f'{{"n":{n}}}'.encode(), "id", 1, "t")

    cache = ResponseCache(2)
    cache.put("a", answer(1))
    cache.put("b", answer(2))
    assert cache.get("a").body == b'{"n":1}'
    cache.put("c", answer(3))  # evicts b, the least recently used
    assert cache.get("b") is None and cache.get("a") and cache.get("c")
    off = ResponseCache(0)
    off.put("x", answer(4))
    assert off.get("x") is None


def test_a_cached_answer_is_sent_under_each_request_s_own_id_and_time():
    import json

    body = (
        b'{"id":"chatcmpl-1","object":"chat.completion","created":100,"model":"m","choices":[{"message":'
        b'{"content":"chatcmpl-1 said \\"created\\":100"}}]}'
    )
    renewed = json.loads(CachedAnswer(body, "chatcmpl-1", 100, "t").renewed("chatcmpl-2", 200))
    assert (renewed["id"], renewed["created"]) == ("chatcmpl-2", 200)
    assert renewed["choices"][0]["message"]["content"] == 'chatcmpl-1 said "created":100'  # the text untouched


def test_artifact_hash_follows_every_file_checked_at_most_once_a_second(tmp_path):
    from rayft.storage import content_hash

    (tmp_path / "adapter_config.json").write_text('{"r": 8}')
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights-1")
    now = [100.0]
    hashes = ArtifactHashes(recheck_s=1.0, clock=lambda: now[0])
    first = hashes.of(str(tmp_path))
    assert first == content_hash(tmp_path)  # the registry's hash, not one of its own
    (tmp_path / "adapter_model.safetensors").write_bytes(b"weights-2!")
    now[0] += 0.5
    assert hashes.of(str(tmp_path)) == first  # within the second: the folder is not looked at
    second = hashes.of(str(tmp_path), fresh=True)  # an admin load looks now
    assert second != first
    (tmp_path / "adapter_model.bin").write_bytes(b"pickled weights")  # any file a loader reads counts
    now[0] += 1.0
    third = hashes.of(str(tmp_path))  # a second later, a request looks again
    assert third not in (first, second) and third == content_hash(tmp_path)
    now[0] += 1.0
    assert hashes.of(str(tmp_path)) == third  # looked again, files unchanged: same hash


def test_api_and_admin_keys_from_config_and_environment(monkeypatch):
    from rayft.serving.auth import admin_keys, api_keys

    monkeypatch.setenv("RAYFT_API_KEYS", "k2, k3,")
    monkeypatch.setenv("RAYFT_ADMIN_KEYS", "a2")
    assert api_keys(ServeConfig(api_keys=["k1", "k2"])) == ["k1", "k2", "k3"]
    assert admin_keys(ServeConfig(api_keys=["k1"], admin_keys=["a1"])) == ["a1", "a2"]
    monkeypatch.delenv("RAYFT_API_KEYS")
    monkeypatch.delenv("RAYFT_ADMIN_KEYS")
    assert api_keys(ServeConfig()) == [] and admin_keys(ServeConfig()) == []


def status_of(check, key):
    try:
        check(key)
    except ApiError as error:
        return error.status
    return 200


def test_admin_routes_want_an_admin_key_once_one_is_configured():
    keys = KeyCheck(["user"], ["admin"])
    assert [status_of(keys.admin, k) for k in ("admin", "user", "wrong", None)] == [200, 403, 401, 401]
    assert [status_of(keys.user, k) for k in ("admin", "user", "wrong", None)] == [200, 200, 401, 401]
    open_api = KeyCheck([], ["admin"])
    assert status_of(open_api.user, None) == 200 and status_of(open_api.admin, None) == 401
    legacy = KeyCheck(["user"], [])  # no admin keys: admin routes take API keys, and the server says so
    assert [status_of(legacy.admin, k) for k in ("user", "wrong")] == [200, 401]
    assert any("admin keys" in w for w in legacy.warnings()) and not keys.warnings()
    assert any("open to anyone" in w for w in open_api.warnings())  # no API keys: said at start-up
    assert not any("open to anyone" in w for w in legacy.warnings())


def test_replica_settings_become_serve_options():
    from rayft.serving.app import engine_options

    assert engine_options(ServeConfig(min_replicas=2, max_replicas=2))["num_replicas"] == 2
    scaling = engine_options(ServeConfig(min_replicas=1, max_replicas=4, target_ongoing_requests=16))
    assert "num_replicas" not in scaling
    assert scaling["autoscaling_config"] == {
        "min_replicas": 1,
        "max_replicas": 4,
        "initial_replicas": 1,
        "target_ongoing_requests": 16,
    }
    with pytest.raises(ConfigError, match="min_replicas"):
        parse_config({"name": "x", "model": {"base": "b"}, "serve": {"min_replicas": 3, "max_replicas": 2}})
    assert engine_options(ServeConfig())["ray_actor_options"]["num_cpus"] == 1
    assert engine_options(ServeConfig(cpus_per_engine=4))["ray_actor_options"]["num_cpus"] == 4


def test_engine_computes_on_the_threads_asked_for_not_rays_one():
    """Ray starts the engine actor with OMP_NUM_THREADS=1; the engine must widen it before torch loads."""
    code = (
        "from rayft.serving.engine import use_cpu_threads; use_cpu_threads(3); import os, torch; "
        "print(torch.get_num_threads(), os.environ['OMP_NUM_THREADS'])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert out == ["3", "3"]


def adapter(ref: str, lora_id: int, digest: str = "d") -> Adapter:
    return Adapter(ref, f"/a/{ref}", digest, lora_id, f"/a/{ref}")


def load(slots: AdapterSlots, new: Adapter) -> list[str]:
    """What the engine does around vLLM's add: make room, then record; returns the refs removed."""
    gone = slots.make_room(new.ref)
    slots.add(new)
    return [a.ref for a in gone]


def test_eviction_takes_the_least_recently_used_idle_adapter():
    slots = AdapterSlots(2)
    a, b = adapter("a", 1), adapter("b", 2)
    assert load(slots, a) == [] and load(slots, b) == []
    assert slots.current("a", "d") is a  # a is now the most recently used
    assert load(slots, adapter("c", 3)) == ["b"]
    assert list(slots.loaded) == ["a", "c"]


def test_eviction_skips_adapters_with_requests_in_flight():
    slots = AdapterSlots(2)
    a, b = adapter("a", 1), adapter("b", 2)
    load(slots, a), load(slots, b)
    with slots.in_use(a):
        assert load(slots, adapter("c", 3)) == ["b"]  # a is older but busy
    assert slots.busy == {}


def test_when_every_slot_is_busy_the_load_is_refused_and_nothing_changes():
    slots = AdapterSlots(2)
    a, b = adapter("a", 1), adapter("b", 2)
    load(slots, a), load(slots, b)
    with slots.in_use(a), slots.in_use(b), slots.in_use(b):
        with pytest.raises(AllSlotsBusy, match="3 in flight"):
            slots.make_room("c")
        assert list(slots.loaded) == ["a", "b"] and slots.retired == {}
    assert load(slots, adapter("c", 3)) == ["a"]  # once they finish, the LRU one goes


def test_a_replaced_or_unloaded_adapter_in_use_keeps_its_slot_until_idle():
    slots = AdapterSlots(2)
    a1, b = adapter("a", 1, "v1"), adapter("b", 2)
    load(slots, a1), load(slots, b)
    with slots.in_use(a1):
        assert slots.current("a", "v2") is None  # its files changed: load it again
        assert load(slots, adapter("a", 3, "v2")) == ["b"]  # a1 retired, still holding a slot
        assert slots.retired == {1: a1}
        with slots.in_use(slots.current("a", "v2")):
            with pytest.raises(AllSlotsBusy):
                slots.make_room("c")
    assert load(slots, adapter("c", 4)) == ["a"]  # a1, idle now, goes first; then no eviction needed
    assert slots.retired == {} and list(slots.loaded) == ["a", "c"]
    a2, c = slots.loaded["a"], slots.loaded["c"]
    with slots.in_use(c):
        assert slots.unload("c") == (True, [])  # busy: retired, removed once idle
    assert slots.unload("missing") == (False, [c])
    assert slots.unload("a") == (True, [a2]) and slots.loaded == {}


class DictKV:
    """Ray's internal KV, faked with a dict (RayKV is exercised against real Ray in test_serving.py)."""

    def __init__(self):
        self.data = {}

    def put(self, key, value):
        self.data[key] = value

    def get(self, key):
        return self.data.get(key)

    def keys(self, prefix):
        return [k for k in self.data if k.startswith(prefix)]

    def delete(self, key):
        self.data.pop(key, None)


def test_metrics_serve_every_replicas_series_once_per_family():
    from prometheus_client.parser import text_string_to_metric_families

    from rayft.serving import metrics

    kv = DictKV()
    replicas = {name: metrics.ServingMetrics(replica=name) for name in ("r1", "r2", "r3")}
    boards = {name: metrics.MetricsBoard("app", name, kv) for name in replicas}
    replicas["r1"].model("m:1").answered("chat", {"prompt_tokens": 3, "completion_tokens": 2, "ttft": 0.1})
    replicas["r2"].model("m:1").answered("chat", {"prompt_tokens": 4, "completion_tokens": 1})
    replicas["r2"].model("m:1").cache["hit"].inc()
    for name in ("r2", "r3"):
        boards[name].publish(replicas[name].snapshot())
    kv.put("other-app/r9", b"not ours")  # another app's key is never read
    replicas["r1"].model("m:1").requests["chat"].inc()  # after r1's own last publish: still served fresh

    stale = replicas["r3"].snapshot() | {"at": 0.0}
    boards["r3"].publish(stale)  # r3 died long ago
    text = replicas["r1"].exposition(boards["r1"].others()).decode()
    assert text.count("# TYPE rayft_requests_total counter") == 1  # one family, samples of every replica
    samples = [s for family in text_string_to_metric_families(text) for s in family.samples]

    def value(name, **labels):
        return sum(s.value for s in samples if s.name == name and labels.items() <= s.labels.items())

    assert value("rayft_requests_total", model="m:1", route="chat", replica="r1") == 2
    assert value("rayft_requests_total", model="m:1", route="chat", replica="r2") == 1
    assert value("rayft_prompt_tokens_total", model="m:1") == 7
    assert value("rayft_response_cache_total", result="hit", replica="r2") == 1
    assert {s.labels["replica"] for s in samples} == {"r1", "r2"}  # r3 dropped
    assert "app/r3" not in kv.data  # and deleted
    boards["r2"].withdraw()
    assert boards["r1"].others() == []


def test_a_key_from_an_unset_or_empty_variable_is_a_config_error_that_never_shows_a_key(monkeypatch):
    def config(keys):
        return parse_config({"name": "x", "model": {"base": "b"}, "serve": {"api_keys": keys}})

    monkeypatch.delenv("PROD_KEY", raising=False)
    with pytest.raises(ConfigError, match=r"serve.api_keys: .*environment variable PROD_KEY, which is not set"):
        config(["${PROD_KEY}"])
    monkeypatch.setenv("PROD_KEY", "")
    with pytest.raises(ConfigError, match=r"serve.api_keys: .*key 0 is empty"):
        config(["${PROD_KEY}"])
    monkeypatch.setenv("PROD_KEY", "s3cret-value")
    assert config(["${PROD_KEY}"]).serve.api_keys == ["s3cret-value"]
    with pytest.raises(ConfigError, match="key 1 is empty") as refused:
        config(["${PROD_KEY}", "  "])
    assert "s3cret-value" not in str(refused.value)


def test_an_empty_bearer_key_is_never_a_key():
    keys = KeyCheck(["k1"], [])
    assert bearer_key("Bearer ") is None and bearer_key("Bearer  k1 ") == "k1" and bearer_key("Basic k1") is None
    assert [status_of(keys.user, bearer_key(h)) for h in ("Bearer ", "Bearer k1", "Bearer k2")] == [401, 200, 401]


def test_keys_come_from_a_file_too(tmp_path, monkeypatch):
    from rayft.serving.auth import api_keys

    (tmp_path / "keys").write_text("k2\n\nk3\n")
    monkeypatch.setenv("RAYFT_API_KEYS_FILE", str(tmp_path / "keys"))
    assert api_keys(ServeConfig(api_keys=["k1"])) == ["k1", "k2", "k3"]
    monkeypatch.setenv("RAYFT_API_KEYS_FILE", str(tmp_path / "missing"))
    with pytest.raises(ConfigError, match="RAYFT_API_KEYS_FILE: .* is not a file"):
        api_keys(ServeConfig())


def test_listening_beyond_loopback_without_keys_is_refused_unless_the_config_says_so(monkeypatch):
    from rayft.serving.auth import check_exposure

    for name in ("RAYFT_API_KEYS", "RAYFT_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    check_exposure(ServeConfig(host="127.0.0.1"))  # only this machine can reach it
    with pytest.raises(ConfigError, match="serve.host 0.0.0.0 can be reached from other machines and no API keys"):
        check_exposure(ServeConfig(host="0.0.0.0"))
    check_exposure(ServeConfig(host="0.0.0.0", api_keys=["k1"]))
    check_exposure(ServeConfig(host="0.0.0.0", allow_unauthenticated=True))
    monkeypatch.setenv("RAYFT_API_KEYS", "k2")
    check_exposure(ServeConfig(host="10.0.0.5"))


def test_limits_have_upper_bounds():
    for field, value in (("max_concurrent_requests", 5000), ("max_request_bytes", 2 << 30), ("max_json_depth", 1)):
        with pytest.raises(ConfigError, match=f"serve.{field}"):
            parse_config({"name": "x", "model": {"base": "b"}, "serve": {field: value}})


def test_the_adapter_disk_cache_keeps_its_bound_dropping_the_least_recently_used(tmp_path, monkeypatch):
    """Artifacts fetched from a URI land in the cache by content hash (`storage`), a second fetch is
    served from disk; past the byte bound the least recently used copies go, never one in use lately."""
    import os

    from rayft import storage

    monkeypatch.setenv("RAYFT_HOME", str(tmp_path / "home"))
    folders = []
    for i in range(3):
        folder = tmp_path / "bucket" / f"a{i}"
        folder.mkdir(parents=True)
        (folder / "adapter_model.safetensors").write_bytes(bytes([i]) * 1000)
        folders.append(folder)
    digests = [storage.content_hash(f) for f in folders]
    fetched = [storage.fetch_verified(f"file://{f}", d, cache_bytes=10_000) for f, d in zip(folders, digests)]
    assert [f.source for f in fetched] == ["storage"] * 3 and all(f.evicted == 0 for f in fetched)
    assert storage.fetch_verified(f"file://{folders[0]}", digests[0]).source == "disk"
    long_ago = 1_000_000_000  # a0 used longest ago, then a1; a2 just now
    os.utime(fetched[0].path, (long_ago, long_ago))
    os.utime(fetched[1].path, (long_ago + 1, long_ago + 1))
    assert storage.prune_cache(storage.artifact_cache(), 2_500) == 1
    assert [f.path.exists() for f in fetched] == [False, True, True]
    assert storage.prune_cache(storage.artifact_cache(), 0) == 1  # a2 was used moments ago: spared
    assert [f.path.exists() for f in fetched] == [False, False, True]
    again = storage.fetch_verified(f"file://{folders[0]}", digests[0], cache_bytes=10_000)
    assert again.source == "storage" and (again.path / "adapter_model.safetensors").read_bytes() == bytes([0]) * 1000


@pytest.mark.vllm
def test_fork_engine_core_makes_vllm_fork_its_engine_core(monkeypatch):
    """vLLM's CPU platform spawns its engine core; the engine replica makes it fork instead (the core
    then starts with torch and vLLM imported: bench/RESULTS.md, start-up)."""
    import vllm.v1.engine.utils as engine_utils

    from rayft.vllm_setup import fork_engine_core

    monkeypatch.setattr(engine_utils, "get_mp_context", engine_utils.get_mp_context)  # put back afterwards
    monkeypatch.setenv("VLLM_WORKER_MULTIPROC_METHOD", "spawn")  # as vLLM's CPU platform sets it
    assert engine_utils.get_mp_context().get_start_method() == "spawn"
    fork_engine_core()
    assert engine_utils.get_mp_context().get_start_method() == "fork"


def quantized_folder(folder, bits: tuple[int, int] = (8, 8)):
    """A model folder whose config.json says what compressed-tensors writes for w8a8 (or w4a16)."""
    import json

    folder.mkdir(parents=True)
    group = {"weights": {"num_bits": bits[0]}, "input_activations": {"num_bits": bits[1]} if bits[1] < 16 else None}
    config = {"quantization_config": {"quant_method": "compressed-tensors", "config_groups": {"group_0": group}}}
    (folder / "config.json").write_text(json.dumps(config))
    return str(folder)


def test_a_quantized_base_runs_in_bfloat16_on_cpu_and_full_precision_in_float32(tmp_path):
    from rayft.vllm_setup import engine_dtype, quantization_scheme

    (tmp_path / "fp").mkdir()
    (tmp_path / "fp" / "config.json").write_text("{}")
    w8, w4 = quantized_folder(tmp_path / "w8"), quantized_folder(tmp_path / "w4", (4, 16))
    assert [quantization_scheme(p) for p in (w8, w4, tmp_path / "fp", "org/hub-id")] == ["w8a8", "w4a16", None, None]
    assert [engine_dtype(p) for p in (w8, w4, tmp_path / "fp")] + [engine_dtype()] == [
        "bfloat16",
        "bfloat16",
        "float32",
        "float32",
    ]


@pytest.mark.parametrize("lineage_holds", [True, False])
def test_a_quantized_base_serves_its_sources_adapters_when_the_lineage_hash_holds(tmp_path, lineage_holds):
    """An adapter trained on the source is served on its quantized version (and listed), one of any
    other base is a 404; when the source's registered hash is not the one the lineage names, the
    quantized base serves none of the source's adapters."""
    from rayft.projects import Caller
    from rayft.registry import Registry
    from rayft.serving.app import served_base
    from rayft.serving.routing import ModelRouter, UnknownModel

    registry = Registry(tmp_path / "r.db")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "config.json").write_text("{}")
    source = registry.register("src", "full", str(tmp_path / "src"), str(tmp_path / "src"))
    lineage = {"source": source.ref, "source_weights_hash": source.weights_hash if lineage_holds else "0" * 64}
    lineage |= {"scheme": "w8a8", "method": "gptq"}
    quantized = registry.register(
        "src-w8a8", "full", source.artifact_uri, quantized_folder(tmp_path / "q"), config={"quantization": lineage}
    )
    ours = registry.register("ours", "adapter", source.artifact_uri, str(tmp_path / "a1"))
    theirs = registry.register("theirs", "adapter", "/another/base", str(tmp_path / "a2"))
    config = parse_config({"name": "x", "model": {"base": f"registry:{quantized.ref}"}})
    base = served_base(config, registry)
    router, caller = ModelRouter(registry, base), Caller("p")
    assert (base.name, base.path, base.quantization) == (
        "src-w8a8",
        quantized.artifact_uri,
        {"scheme": "w8a8", "method": "gptq", "source": source.ref},
    )
    assert base.trained_on == (source.artifact_uri if lineage_holds else quantized.artifact_uri)
    cards = dict(router.model_cards(caller))
    assert cards["src-w8a8"]["quantization"]["scheme"] == "w8a8"
    assert (ours.ref in cards) is lineage_holds and theirs.ref not in cards
    if lineage_holds:
        assert router.resolve(ours.ref, None, caller).adapter == ours
    else:
        with pytest.raises(UnknownModel):
            router.resolve(ours.ref, None, caller)
    with pytest.raises(UnknownModel):
        router.resolve(theirs.ref, None, caller)


def test_a_sigterm_while_ray_starts_reaches_rayft_not_rays_handler():
    """`ray.init` installs a SIGTERM handler of its own (a stack dump, then an abort: seen as exit -6
    when a SIGTERM landed in Ray's start on a loaded machine). Start-up holds the signals while Ray
    starts and hands a held one to rayft's handler at the next phase. Here a stand-in for Ray's
    handler exits 3; without the hold it runs."""
    script = (
        "import os, signal, sys\n"
        "from rayft.serving.stop_signals import StopSignals, StoppedDuringStartup\n"
        "stop = StopSignals()\n"
        "stop.before('ray')\n"
        "signal.signal(signal.SIGTERM, lambda *_: os._exit(3))  # what Ray's start does\n"
        "os.kill(os.getpid(), signal.SIGTERM)\n"
        "try:\n"
        "    stop.before('serve')\n"
        "except StoppedDuringStartup as stopped:\n"
        "    print('stopped on', stopped)\n"
        "    sys.exit(0)\n"
        "sys.exit(4)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout.strip()) == (0, "stopped on SIGTERM"), done.stderr
