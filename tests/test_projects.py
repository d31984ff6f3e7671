"""Projects without Ray: which models a caller sees and may call (the base, the endpoint's own
adapters, its project's; another project's is a 404 exactly like a name that does not exist), the
registry keeping a name in one project, config errors that never show a key, and the serving
deployments leaving a small cluster room for the jobs they start."""

import pytest

from rayft.config import ConfigError, ServeConfig, parse_config
from rayft.projects import Caller
from rayft.registry import Registry, RegistryError
from rayft.serving.app import reservations
from rayft.serving.routing import ModelRouter, ServedBase, UnknownModel

SUPPORT, LEGAL, ADMIN = Caller("support"), Caller("legal"), Caller("ops", admin=True)


@pytest.fixture
def router(tmp_path) -> ModelRouter:
    registry = Registry(tmp_path / "r.db")
    for name, project in (("shared", None), ("ft-support-bot", "support"), ("ft-legal-bot", "legal")):
        folder = tmp_path / name
        folder.mkdir()
        (folder / "adapter_config.json").write_text("{}")
        version = registry.register(name, "adapter", "/base", str(folder), weights_hash="h", project=project)
        registry.set_alias(name, "live", version.version)
    return ModelRouter(registry, ServedBase("tiny", "/base"))


def test_a_caller_resolves_the_base_the_shared_adapters_and_its_projects_only(router):
    for model in ("tiny", "shared", "shared:1", "shared:live", "ft-support-bot:1", "ft-support-bot:live"):
        assert router.resolve(model, None, SUPPORT).served in ("tiny", "shared:1", "ft-support-bot:1")
    for model in ("ft-legal-bot", "ft-legal-bot:1", "ft-legal-bot:live"):
        with pytest.raises(UnknownModel) as hidden:
            router.resolve(model, None, SUPPORT)
        with pytest.raises(UnknownModel) as missing:
            router.resolve("ft-nobody-bot:1", None, SUPPORT)
        assert str(hidden.value) == str(missing.value).replace("ft-nobody-bot:1", model)  # told apart by nothing
        assert router.resolve(model, None, ADMIN).served == "ft-legal-bot:1"


def test_model_cards_list_only_what_the_caller_may_call(router):
    seen = {card for card, _ in router.model_cards(SUPPORT)}
    assert seen == {
        "tiny",
        "shared:1",
        "shared",
        "shared:live",
        "ft-support-bot:1",
        "ft-support-bot",
        "ft-support-bot:live",
    }
    assert not any("legal" in card for card in seen)
    assert {card for card, _ in router.model_cards(ADMIN)} >= seen | {"ft-legal-bot:1", "ft-legal-bot:live"}


def test_every_version_of_a_name_belongs_to_one_project(tmp_path):
    registry = Registry(tmp_path / "r.db")
    for n in (1, 2, 3):
        (tmp_path / f"a{n}").mkdir()
    registry.register("ft-support-bot", "adapter", "/base", str(tmp_path / "a1"), weights_hash="h", project="support")
    with pytest.raises(RegistryError, match="belongs to project 'support', not project 'legal'"):
        registry.register("ft-support-bot", "adapter", "/base", str(tmp_path / "a2"), weights_hash="h", project="legal")
    with pytest.raises(RegistryError, match="not no project"):
        registry.register("ft-support-bot", "adapter", "/base", str(tmp_path / "a3"), weights_hash="h")
    assert registry.get("ft-support-bot").project == "support"


def test_a_registry_made_before_projects_gains_the_column(tmp_path):
    import sqlite3

    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE versions (name TEXT NOT NULL, version INTEGER NOT NULL, kind TEXT NOT NULL, base_model TEXT"
            " NOT NULL, artifact_uri TEXT NOT NULL, weights_hash TEXT, dataset_hash TEXT, config TEXT NOT NULL DEFAULT"
            " '{}', metrics TEXT NOT NULL DEFAULT '{}', eval_report TEXT, parent TEXT, code_revision TEXT, created_at"
            " REAL NOT NULL, PRIMARY KEY (name, version))"
        )
        db.execute(
            "INSERT INTO versions (name, version, kind, base_model, artifact_uri, created_at) VALUES"
            " ('old', 1, 'adapter', '/b', '/a', 0)"
        )
    assert Registry(path).get("old:1").project is None


SECRETS = {
    "api": "sk-api-7f3e9a1c",
    "admin": "sk-admin-51b2d0e8",
    "project": "sk-proj-c0ffee42",
    "reviewer": "sk-review-9d8c7b6a",
    "env": "sk-env-13572468",
}


def test_config_errors_never_show_a_key(monkeypatch):
    monkeypatch.setenv("RAYFT_API_KEYS", SECRETS["env"])
    broken = [
        {"serve": {"api_keys": [SECRETS["api"], "${UNSET_A}"]}},
        {"serve": {"admin_keys": [SECRETS["admin"], ""]}},
        {"serve": {"projects": {"support": {"keys": [SECRETS["project"], "${UNSET_B}"]}}}},
        {"serve": {"projects": {"Bad-Name": {"keys": [SECRETS["project"]]}}}},
        {"serve": {"projects": {"a": {"keys": [SECRETS["project"]]}, "b": {"keys": [SECRETS["project"]]}}}},
        {"review": {"reviewers": {"ana": SECRETS["reviewer"], "ben": "${UNSET_C}"}}},
        {"serve": [SECRETS["api"]]},  # a whole section of the wrong shape
        {"serve": {"port": SECRETS["env"]}},  # a key pasted into the wrong field
    ]
    for change in broken:
        with pytest.raises(ConfigError) as refused:
            parse_config({"name": "x", "model": {"base": "b"}} | change)
        message = str(refused.value)
        assert "invalid config" in message
        assert not any(secret in message for secret in SECRETS.values()), message
    with pytest.raises(ConfigError, match="reviewer 'ben': names the environment variable UNSET_C"):
        parse_config({"name": "x", "model": {"base": "b"}, "review": {"reviewers": {"ben": "${UNSET_C}"}}})


def test_a_reviewer_keys_entry_without_a_name_is_refused_without_echoing_it(monkeypatch):
    from rayft.config import ReviewConfig
    from rayft.eval.review_page import reviewer_keys

    monkeypatch.setenv("RAYFT_REVIEWER_KEYS", f"ana=x1,{SECRETS['reviewer']}")
    with pytest.raises(ConfigError) as refused:
        reviewer_keys(ReviewConfig())
    assert str(refused.value) == "RAYFT_REVIEWER_KEYS: entry 2 is not name=key"


def test_serving_leaves_a_small_cluster_room_for_the_jobs_it_starts():
    on = {"fine_tuning": {"enabled": True}}
    small = reservations(ServeConfig(**on), 2)
    assert (small.engine, small.ingress) == (0, 0) and "leaves 2 to fine-tuning" in small.note
    medium = reservations(ServeConfig(**on), 3)
    assert medium.engine + medium.ingress == pytest.approx(1) and medium.note
    assert reservations(ServeConfig(**on), 8) == reservations(ServeConfig(), 2) == reservations(ServeConfig(), None)
    assert (reservations(ServeConfig(), 2).engine, reservations(ServeConfig(), 2).ingress) == (1, 0.25)
    pinned = reservations(ServeConfig(cpus_per_engine=2, **on), 2)
    assert pinned.engine == 2 and "will wait" in pinned.note  # set by hand: kept, and said


def test_sampled_traffic_and_its_review_items_belong_to_the_asking_project(tmp_path):
    from starlette.testclient import TestClient

    from rayft.config import ReviewConfig, TrafficConfig
    from rayft.eval.review_items import singles_from_traffic
    from rayft.eval.review_page import build_review_app
    from rayft.feedback import FeedbackStore
    from rayft.serving.traffic import TrafficSampler

    registry = Registry(tmp_path / "r.db")
    (tmp_path / "shared").mkdir()
    shared = registry.register("shared", "adapter", "/base", str(tmp_path / "shared"), weights_hash="h")
    sampler = TrafficSampler(TrafficConfig(sample_share=1.0, path=str(tmp_path / "traffic")))
    for project, question in (("support", "where is my parcel"), ("legal", "review this contract")):
        sampler.record(shared.ref, "h", [{"role": "user", "content": question}], "ok", project)
    store = FeedbackStore(tmp_path / "r.db")
    assert singles_from_traffic(registry, store, shared.ref, tmp_path / "traffic").added == 2
    theirs = store.next_item("ana", 2, source="traffic", project="legal")
    assert theirs.project == "legal" and theirs.prompt[0]["content"] == "review this contract"
    assert store.next_item("ana", 2, source="traffic", project="nobody") is None

    page = TestClient(build_review_app(ReviewConfig(reviewers={"ana": "k"}), store=store, project="support"))
    auth = {"Authorization": "Bearer k"}
    shown = page.get("/api/next", headers=auth).json()["item"]
    assert shown["prompt"][0]["content"] == "where is my parcel"
    other = page.post("/api/ratings", json={"item": theirs.id, "score": 3}, headers=auth)
    assert other.status_code == 404  # another project's item does not exist on this page
