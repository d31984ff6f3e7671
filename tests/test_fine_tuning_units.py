"""The fine-tuning service without Ray: every create field checked (a 400 naming it, whatever JSON
arrives), per-key limits, tenancy, cancel, paging, upload limits, file checks and estimates."""

import io
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayft.config import FineTuningConfig, SplitConfig, TrainConfig
from rayft.service.jobs import Caller, FineTuningJobs
from rayft.service.objects import ServiceError
from rayft.service.pipeline import ServicePaths

ALICE, BOB, ADMIN = Caller("alice"), Caller("bob"), Caller("root", admin=True)
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


def make_service(tmp_path, **limits) -> FineTuningJobs:
    config = FineTuningConfig(enabled=True, **limits)
    paths = ServicePaths(home=str(tmp_path), registry=str(tmp_path / "r.db"), files=str(tmp_path / "f"), jobs="")
    return FineTuningJobs.open(config, {"tiny", "registry:tiny:1"}, paths)


def upload(service, owner: str, text: str = json.dumps(CHAT) + "\n", name: str = "train.jsonl"):
    return service.files.save_upload(io.BytesIO(text.encode()), name, "fine-tune", owner)


@pytest.fixture
def service(tmp_path):
    return make_service(tmp_path)


@pytest.fixture
def alice_file(service):
    return upload(service, ALICE.owner).id


@pytest.mark.parametrize(
    "change, param",
    [
        ({"model": "gpt-4o"}, "model"),
        ({"model": None}, "model"),
        ({"training_file": "file-nope"}, "training_file"),
        ({"training_file": 3}, "training_file"),
        ({"validation_file": "file-nope"}, "validation_file"),
        ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": 2.5}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
        ({"hyperparameters": {"batch_size": "big"}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        ({"hyperparameters": [1]}, "hyperparameters"),
        ({"method": {"type": "dpo"}}, "method.type"),
        ({"method": {"type": "supervised", "supervised": {"beta": 1}}}, "method.supervised"),
        ({"suffix": "no spaces please"}, "suffix"),
        ({"suffix": "x" * 41}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"metadata": {"k": 1}}, "metadata"),
        ({"metadata": {str(i): "v" for i in range(17)}}, "metadata"),
        ({"metadata": {"promote_to": "1bad"}}, "metadata.promote_to"),
        ({"integrations": [{"type": "wandb"}]}, "integrations"),
        ({"x_rayft": {"adaptation": "full"}}, "x_rayft.adaptation"),
        ({"x_rayft": {"adaptation": "qlora"}}, "x_rayft.adaptation"),
        ({"learning_rate": 0.1}, "learning_rate"),
    ],
)
def test_each_bad_field_is_a_400_naming_it_and_nothing_is_stored(service, alice_file, change, param):
    body = {"model": "tiny", "training_file": alice_file} | change
    with pytest.raises(ServiceError) as refused:
        service.create(ALICE, body)
    assert refused.value.status == 400 and refused.value.param == param
    assert param.split(".")[0] in refused.value.message
    assert service.list_jobs(ALICE, None, 20)["data"] == []


def test_a_good_request_makes_a_validating_job_with_openai_fields(service, alice_file):
    hyper = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}
    job = service.create(
        ALICE,
        {
            "model": "tiny",
            "training_file": alice_file,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
            "suffix": "support",
            "seed": 7,
            "metadata": {"promote_to": "prod"},
        },
    )
    shown = job.api()
    assert shown["object"] == "fine_tuning.job" and shown["status"] == "validating_files"
    assert shown["hyperparameters"] == hyper and shown["method"]["type"] == "supervised"
    assert shown["training_file"] == alice_file and shown["seed"] == 7 and shown["fine_tuned_model"] is None
    assert job.name == "ft-support" and shown["user_provided_suffix"] == "support"
    assert [e["message"] for e in service.events(ALICE, job.id, None, 20)["data"]] == [
        "Job created; validating train.jsonl"
    ]


def test_hyperparameters_once_only(service, alice_file):
    with pytest.raises(ServiceError, match="give them once") as refused:
        service.create(
            ALICE,
            {
                "model": "tiny",
                "training_file": alice_file,
                "hyperparameters": {"n_epochs": 1},
                "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": 2}}},
            },
        )
    assert refused.value.param == "hyperparameters"


@settings(max_examples=150, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from(
            ["model", "training_file", "hyperparameters", "method", "suffix", "seed", "metadata", "x_rayft"]
        ),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=50),
            lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=20), inner, max_size=4),
            max_leaves=12,
        ),
    )
)
def test_whatever_json_arrives_create_answers_a_4xx_or_a_job(tmp_path_factory, body):
    service = make_service(tmp_path_factory.mktemp("s"))
    try:
        job = service.create(ALICE, body)
    except ServiceError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert job.status == "validating_files"  # only a body with a valid model and file gets here


def test_a_key_sees_and_cancels_only_its_own_and_an_admin_sees_all(service, alice_file):
    bob_file = upload(service, BOB.owner).id
    with pytest.raises(ServiceError) as hidden:
        service.create(BOB, {"model": "tiny", "training_file": alice_file})
    assert hidden.value.status == 400 and hidden.value.param == "training_file"  # as if it did not exist
    assert "no file" in hidden.value.message
    alices = service.create(ALICE, {"model": "tiny", "training_file": alice_file})
    bobs = service.create(BOB, {"model": "tiny", "training_file": bob_file})
    assert [j["id"] for j in service.list_jobs(ALICE, None, 20)["data"]] == [alices.id]
    assert [j["id"] for j in service.list_jobs(ADMIN, None, 20)["data"]] == [bobs.id, alices.id]
    assert [f["id"] for f in service.list_files(BOB, None, None, 20)["data"]] == [bob_file]
    for operation in (
        lambda: service.visible_job(BOB, alices.id),
        lambda: service.cancel(BOB, alices.id),
        lambda: service.events(BOB, alices.id, None, 20),
        lambda: service.delete_file(BOB, alice_file),
        lambda: service.visible_file(BOB, alice_file),
    ):
        with pytest.raises(ServiceError) as refused:
            operation()
        assert refused.value.status == 404
    assert service.cancel(ADMIN, alices.id).status == "cancelled"
    with pytest.raises(ServiceError) as again:
        service.cancel(ALICE, alices.id)
    assert again.value.status == 409 and "already cancelled" in again.value.message


def test_unfinished_jobs_per_key_are_limited_with_the_limit_named(tmp_path):
    service = make_service(tmp_path, max_jobs_per_key=2)
    file_id = upload(service, ALICE.owner).id
    first = service.create(ALICE, {"model": "tiny", "training_file": file_id})
    service.create(ALICE, {"model": "tiny", "training_file": file_id})
    with pytest.raises(ServiceError, match="max_jobs_per_key") as refused:
        service.create(ALICE, {"model": "tiny", "training_file": file_id})
    assert refused.value.status == 429
    service.create(BOB, {"model": "tiny", "training_file": upload(service, BOB.owner).id})  # other keys unaffected
    service.cancel(ALICE, first.id)
    service.create(ALICE, {"model": "tiny", "training_file": file_id})  # a finished job frees its place


def test_lists_are_newest_first_and_paged_with_after(tmp_path):
    service = make_service(tmp_path, max_jobs_per_key=10)
    alice_file = upload(service, ADMIN.owner).id
    ids = [service.create(ADMIN, {"model": "tiny", "training_file": alice_file}).id for _ in range(5)]
    first = service.list_jobs(ADMIN, None, 2)
    second = service.list_jobs(ADMIN, first["data"][-1]["id"], 2)
    third = service.list_jobs(ADMIN, second["data"][-1]["id"], 2)
    assert [j["id"] for j in first["data"] + second["data"] + third["data"]] == ids[::-1]
    assert first["has_more"] and second["has_more"] and not third["has_more"]
    with pytest.raises(ServiceError) as refused:
        service.list_jobs(ADMIN, None, 0)
    assert refused.value.param == "limit"


def test_uploads_over_a_limit_are_413_naming_it_and_leave_nothing(tmp_path):
    service = make_service(tmp_path, max_file_bytes=100, max_file_records=2)
    with pytest.raises(ServiceError, match="max_file_bytes") as big:
        upload(service, ALICE.owner, "x" * 101)
    assert big.value.status == 413
    with pytest.raises(ServiceError, match="3 records; the limit is 2") as many:
        upload(service, ALICE.owner, '{"a": 1}\n' * 3)
    assert many.value.status == 413
    with pytest.raises(ServiceError) as kind:
        upload(service, ALICE.owner, "a,b\n", name="train.csv")
    assert kind.value.status == 400 and kind.value.param == "file"
    with pytest.raises(ServiceError) as purpose:
        service.files.save_upload(io.BytesIO(b"{}"), "t.jsonl", "assistants", ALICE.owner)
    assert purpose.value.param == "purpose"
    assert not list((tmp_path / "f").glob("*/*"))  # nothing kept of any of them
    assert service.list_files(ADMIN, None, None, 20)["data"] == []


def test_check_files_names_every_unusable_line(tickets_file, tiny_model):
    from rayft.config import DataConfig
    from rayft.data.inspect import check_files

    check = check_files([str(tickets_file)], DataConfig(max_tokens=256), tiny_model)
    lines = tickets_file.read_text().splitlines()
    assert check.records == len([line for line in lines if line.strip()])
    assert check.kept == check.records - len(check.rejects) and check.tokens > check.kept
    for reject in check.rejects:  # each names a line that really is unusable there
        raw = lines[reject.line - 1]
        assert reject.reason and ("messages" not in raw or reject.reason != "invalid_json" or raw.count("{") > 0)
    assert {r.reason for r in check.rejects} >= {"invalid_json", "no_assistant_turn"}
    assert f"line {check.rejects[0].line}" in check.rejects_summary()


def test_estimate_follows_the_plan_and_prices_gpu_hours():
    from rayft.estimate import estimate
    from rayft.plan import make_plan

    train = TrainConfig(
        epochs=2, batch_size=8, num_workers=2, use_gpu=True, tokens_per_second=1000, price_per_gpu_hour=3
    )
    found = estimate(train, SplitConfig(), records=500, tokens=50_000)
    plan = make_plan(train, 400, 50, 40_000)
    assert (found.steps, found.epochs, found.tokens) == (plan.total_steps, 2, 40_000)
    assert found.trained_tokens == 80_000 and found.seconds == 80.0
    assert found.gpu_hours == round(80 / 3600 * 2, 4) and found.cost == round(80 / 3600 * 2 * 3, 2)
    assert estimate(train.model_copy(update={"use_gpu": False}), SplitConfig(), 500, 50_000).cost == 0


def test_rayft_estimate_counts_the_configs_inputs_and_prints_the_plan(tickets_file, tiny_model, tmp_path, capsys):
    from rayft.cli import main
    from rayft.data.inspect import check_files
    from rayft.estimate import Estimate
    from rayft.plan import make_plan

    config = tmp_path / "c.yaml"
    config.write_text(
        f"name: e\nmodel: {{base: {tiny_model}}}\ndata: {{inputs: [{tickets_file}], max_tokens: 256}}\n"
        "train: {epochs: 2, batch_size: 16, tokens_per_second: 500}\n"
    )
    assert main(["estimate", str(config), "--json"]) == 0
    found = Estimate.model_validate_json(capsys.readouterr().out)
    check = check_files([str(tickets_file)], check_config_data(config), tiny_model)
    assert found.records == check.kept and check.rejects  # the planted bad lines are not counted
    plan = make_plan(TrainConfig(epochs=2, batch_size=16), int(check.kept * 0.8), int(check.kept * 0.1), 0)
    assert (found.steps, found.epochs) == (plan.total_steps, 2) and found.seconds == round(
        found.trained_tokens / 500, 1
    )
    assert main(["estimate", str(config)]) == 0
    assert f"→ {found.steps} steps over 2 epochs" in capsys.readouterr().out


def check_config_data(path):
    from rayft.config import load_config

    return load_config(path).data
