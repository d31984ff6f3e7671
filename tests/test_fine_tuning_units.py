"""The fine-tuning service without Ray: every create field checked by the typed request (a 400
naming it, whatever JSON arrives), DPO jobs (OpenAI's method, a file of preference pairs) and the
config they train with, continued training from a fine-tuned model of the caller's (the exact
version, its lineage checked), the checkpoints a job registered, projects (another project's files,
jobs and models are 404s or the unknown model's 400), their quotas (413/429 naming the limit),
expiry and the retention sweep, paging, upload limits, file checks and estimates."""

import io
import json
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rayft.config import FineTuningConfig, ProjectConfig, SplitConfig, TrainConfig
from rayft.projects import Caller, ProjectDirectory
from rayft.service.jobs import FineTuningJobs
from rayft.service.objects import JobStatus, ServiceError
from rayft.service.pipeline import ServicePaths
from rayft.service.requests import CreateFineTuningJobRequest, FileUploadForm, parse

ALICE, BOB, ADMIN = Caller("support"), Caller("legal"), Caller("ops", admin=True)
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}
PAIR = {
    "input": {"messages": [{"role": "user", "content": "hi"}]},
    "preferred_output": [{"role": "assistant", "content": "Hello, how can I help?"}],
    "non_preferred_output": [{"role": "assistant", "content": "what"}],
}
FORM = FileUploadForm(purpose="fine-tune")
BASE = "/models/tiny"  # where the base is: what its fine-tuned versions name as their base


def make_service(tmp_path, projects: dict | None = None, **settings_) -> FineTuningJobs:
    config = FineTuningConfig(enabled=True, **settings_)
    paths = ServicePaths(
        home=str(tmp_path), registry=str(tmp_path / "r.db"), files=str(tmp_path / "f"), jobs=str(tmp_path / "j")
    )
    configured = {name: ProjectConfig(**p) for name, p in (projects or {}).items()}
    directory = ProjectDirectory.of(configured, config)
    return FineTuningJobs.open(config, {"tiny", "tiny:1"}, BASE, paths, directory)


def upload(service, caller: Caller, text: str = json.dumps(CHAT) + "\n", name="train.jsonl", form=FORM):
    return service.files.save_upload(io.BytesIO(text.encode()), name, form, caller.project)


def create(service, caller: Caller, body: dict):
    """What `POST /v1/fine_tuning/jobs` does with a parsed JSON body."""
    return service.create(caller, parse(CreateFineTuningJobRequest, body))


@pytest.fixture
def service(tmp_path):
    return make_service(tmp_path)


@pytest.fixture
def alice_file(service):
    return upload(service, ALICE).id


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
        ({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size"),
        ({"hyperparameters": {"learning_rate_multiplier": -1}}, "hyperparameters.learning_rate_multiplier"),
        ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
        ({"hyperparameters": [1]}, "hyperparameters"),
        ({"method": {"type": "reinforcement"}}, "method.type"),
        ({"method": {"type": "reinforcement", "reinforcement": {}}}, "method.type"),
        ({"method": {"hyperparameters": {}}}, "method.type"),
        ({"method": {"type": "dpo"}}, "training_file"),  # a chat file: no preference pairs
        ({"method": {"type": "supervised", "dpo": {}}}, "method.dpo"),
        ({"method": {"type": "dpo", "supervised": {}}}, "method.supervised"),
        ({"method": {"type": "supervised", "supervised": {"beta": 1}}}, "method.supervised.beta"),
        (
            {"method": {"type": "supervised", "supervised": {"hyperparameters": {"beta": 1}}}},
            "method.supervised.hyperparameters.beta",
        ),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}}, "method.dpo.hyperparameters.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}}, "method.dpo.hyperparameters.beta"),
        ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}}, "method.dpo.hyperparameters.beta"),
        (
            {"method": {"type": "dpo", "dpo": {"hyperparameters": {"n_epochs": 51}}}},
            "method.dpo.hyperparameters.n_epochs",
        ),
        ({"model": "ft-support-nothing:1"}, "model"),
        ({"model": "tiny:prod"}, "model"),
        ({"suffix": "no spaces please"}, "suffix"),
        ({"suffix": "x" * 65}, "suffix"),
        ({"seed": -1}, "seed"),
        ({"seed": "7"}, "seed"),
        ({"seed": 2**31}, "seed"),
        ({"metadata": {"k": 1}}, "metadata.k"),
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
        create(service, ALICE, body)
    assert refused.value.status == 400 and refused.value.param == param
    assert refused.value.message.startswith(param.split(".")[0])
    assert service.list_jobs(ALICE, None, 20)["data"] == []


def test_a_good_request_makes_a_validating_job_with_openai_fields(service, alice_file):
    hyper = {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": 0.5}
    job = create(
        service,
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
    assert job.name == "ft-support-support" and job.project == "support" and shown["user_provided_suffix"] == "support"
    assert [e["message"] for e in service.events(ALICE, job.id, None, 20)["data"]] == [
        "Job created; validating train.jsonl"
    ]


def test_hyperparameters_once_only(service, alice_file):
    with pytest.raises(ServiceError, match="give them once") as refused:
        create(
            service,
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
        job = create(service, ALICE, body)
    except ServiceError as error:
        assert 400 <= error.status < 500 and error.message
        return
    assert job.status == JobStatus.VALIDATING  # only a body with a valid model and file gets here


def test_a_project_sees_and_cancels_only_its_own_and_an_admin_sees_all(service, alice_file):
    bob_file = upload(service, BOB).id
    with pytest.raises(ServiceError) as hidden:
        create(service, BOB, {"model": "tiny", "training_file": alice_file})
    assert hidden.value.status == 400 and hidden.value.param == "training_file"  # as if it did not exist
    assert "no file" in hidden.value.message
    alices = create(service, ALICE, {"model": "tiny", "training_file": alice_file})
    bobs = create(service, BOB, {"model": "tiny", "training_file": bob_file})
    assert [j["id"] for j in service.list_jobs(ALICE, None, 20)["data"]] == [alices.id]
    assert [j["id"] for j in service.list_jobs(ADMIN, None, 20)["data"]] == [bobs.id, alices.id]
    assert [f["id"] for f in service.list_files(BOB, None, None, 20)["data"]] == [bob_file]
    for operation in (
        lambda: service.visible_job(BOB, alices.id),
        lambda: service.cancel(BOB, alices.id),
        lambda: service.events(BOB, alices.id, None, 20),
        lambda: service.checkpoints(BOB, alices.id, None, 10),
        lambda: service.pause(BOB, alices.id),
        lambda: service.resume(BOB, alices.id),
        lambda: service.delete_file(BOB, alice_file),
        lambda: service.visible_file(BOB, alice_file),
    ):
        with pytest.raises(ServiceError) as refused:
            operation()
        assert refused.value.status == 404
    assert service.cancel(ADMIN, alices.id).status == JobStatus.CANCELLED
    with pytest.raises(ServiceError) as again:
        service.cancel(ALICE, alices.id)
    assert again.value.status == 409 and "already cancelled" in again.value.message


def test_keys_belong_to_their_project_and_unlisted_keys_are_projects_of_their_own():
    config = FineTuningConfig()
    directory = ProjectDirectory.of({"support": ProjectConfig(keys=["k1", "k2"], max_files=3)}, config)
    assert directory.project_of("k1") == directory.project_of("k2") == "support"
    loner, other = directory.project_of("stray-key"), directory.project_of("other-key")
    assert loner != other and "stray" not in loner and loner != "support"
    assert directory.limits("support").max_files == 3  # its own
    assert directory.limits("support").max_unfinished_jobs == config.project_limits.max_unfinished_jobs
    assert directory.limits(loner) == config.project_limits
    assert directory.limit_setting("support", "max_files") == "serve.projects.support.max_files"
    assert directory.limit_setting(loner, "max_files") == "serve.fine_tuning.project_limits.max_files"
    assert directory.without_keys().project_of("k1") != "support" and directory.without_keys().limits("support")


def test_registry_names_carry_the_project_so_no_job_can_make_another_projects_name(service, alice_file):
    from rayft.service.jobs import registry_name

    job = create(service, ALICE, {"model": "tiny", "training_file": alice_file, "suffix": "legal-support"})
    assert job.name == "ft-support-legal-support"
    assert registry_name("legal", "support") != registry_name("legal_support", "")  # '-' never in a project


def test_unfinished_jobs_per_project_are_limited_with_the_setting_named(tmp_path):
    service = make_service(
        tmp_path,
        projects={"support": {"keys": ["k"], "max_unfinished_jobs": 2}},
        project_limits={"max_unfinished_jobs": 1},
    )
    file_id = upload(service, ALICE).id
    first = create(service, ALICE, {"model": "tiny", "training_file": file_id})
    create(service, ALICE, {"model": "tiny", "training_file": file_id})
    with pytest.raises(ServiceError, match="serve.projects.support.max_unfinished_jobs") as refused:
        create(service, ALICE, {"model": "tiny", "training_file": file_id})
    assert refused.value.status == 429
    create(service, BOB, {"model": "tiny", "training_file": upload(service, BOB).id})  # another project: its own
    with pytest.raises(ServiceError, match="serve.fine_tuning.project_limits.max_unfinished_jobs"):
        create(service, BOB, {"model": "tiny", "training_file": upload(service, BOB).id})
    service.cancel(ALICE, first.id)
    create(service, ALICE, {"model": "tiny", "training_file": file_id})  # a finished job frees its place


def test_a_projects_files_and_bytes_are_limited_413_and_429_naming_the_limit(tmp_path):
    record = json.dumps(CHAT) + "\n"
    service = make_service(
        tmp_path,
        projects={"support": {"keys": ["k"], "max_files": 2}},
        project_limits={"max_files": 10, "max_file_bytes_total": 3 * len(record)},
    )
    upload(service, ALICE)
    upload(service, ALICE)
    with pytest.raises(ServiceError, match=r"serve.projects.support.max_files = 2") as files:
        upload(service, ALICE)
    assert files.value.status == 429 and files.value.param == "file"
    upload(service, BOB, record * 2)
    with pytest.raises(ServiceError, match=r"serve.fine_tuning.project_limits.max_file_bytes_total") as full:
        upload(service, BOB, record * 2)
    assert full.value.status == 413
    assert len(service.list_files(ADMIN, None, None, 20)["data"]) == 3  # the refused ones left nothing
    assert len(list((tmp_path / "f").iterdir())) == 3


def test_uploads_expire_after_what_they_ask_and_the_sweep_keeps_files_a_job_still_reads(service, tmp_path):
    form = parse(
        FileUploadForm,
        {"purpose": "fine-tune", "expires_after[anchor]": "created_at", "expires_after[seconds]": "3600"},
    )
    expiring = upload(service, ALICE, form=form)
    kept = upload(service, ALICE)
    assert expiring.expires_at == expiring.created_at + 3600 and "expires_at" not in kept.api()
    used = upload(service, ALICE, form=form)
    job = create(service, ALICE, {"model": "tiny", "training_file": used.id})
    with service.store.db.write() as db:  # an hour later
        db.execute("UPDATE ft_files SET expires_at = ? WHERE expires_at IS NOT NULL", (int(time.time()) - 1,))
    assert service.files.sweep() == [expiring.id]
    assert service.store.file(expiring.id) is None and not (tmp_path / "f" / expiring.id).exists()
    assert service.store.file(used.id) is not None  # job is not finished: it still reads it
    service.cancel(ALICE, job.id)
    assert service.files.sweep() == [used.id]
    assert service.store.file(kept.id) is not None


def test_retention_days_sweeps_old_files(tmp_path):
    service = make_service(tmp_path, file_retention_days=1)
    old, new = upload(service, ALICE), upload(service, ALICE)
    with service.store.db.write() as db:
        db.execute("UPDATE ft_files SET created_at = ? WHERE id = ?", (int(time.time()) - 2 * 86400, old.id))
    assert service.files.sweep() == [old.id]
    assert service.store.file(new.id) is not None


def test_a_file_an_unfinished_job_reads_cannot_be_deleted(service, alice_file):
    job = create(service, ALICE, {"model": "tiny", "training_file": alice_file})
    with pytest.raises(ServiceError, match=job.id) as busy:
        service.delete_file(ALICE, alice_file)
    assert busy.value.status == 409 and busy.value.param == "file_id"
    service.cancel(ALICE, job.id)
    assert service.delete_file(ALICE, alice_file)["deleted"]


def test_lists_are_newest_first_and_paged_with_after_and_files_lists_name_their_ends(tmp_path):
    service = make_service(tmp_path, project_limits={"max_unfinished_jobs": 10})
    alice_file = upload(service, ADMIN).id
    ids = [create(service, ADMIN, {"model": "tiny", "training_file": alice_file}).id for _ in range(5)]
    first = service.list_jobs(ADMIN, None, 2)
    second = service.list_jobs(ADMIN, first["data"][-1]["id"], 2)
    third = service.list_jobs(ADMIN, second["data"][-1]["id"], 2)
    assert [j["id"] for j in first["data"] + second["data"] + third["data"]] == ids[::-1]
    assert first["has_more"] and second["has_more"] and not third["has_more"]
    files = service.list_files(ADMIN, None, None, 5)
    assert files["first_id"] == files["last_id"] == alice_file
    empty = service.list_files(ALICE, None, None, 5)
    assert (empty["data"], empty["first_id"], empty["last_id"]) == ([], "", "")


def test_uploads_over_a_file_limit_are_413_naming_it_and_leave_nothing(tmp_path):
    service = make_service(tmp_path, max_file_bytes=100, max_file_records=2)
    with pytest.raises(ServiceError, match="max_file_bytes") as big:
        upload(service, ALICE, "x" * 101)
    assert big.value.status == 413
    with pytest.raises(ServiceError, match="3 records; the limit is 2") as many:
        upload(service, ALICE, '{"a": 1}\n' * 3)
    assert many.value.status == 413
    with pytest.raises(ServiceError) as kind:
        upload(service, ALICE, "a,b\n", name="train.csv")
    assert kind.value.status == 400 and kind.value.param == "file"
    with pytest.raises(ServiceError) as purpose:
        parse(FileUploadForm, {"purpose": "assistants"})
    assert purpose.value.param == "purpose"
    with pytest.raises(ServiceError) as half:
        parse(FileUploadForm, {"purpose": "fine-tune", "expires_after[seconds]": "4000"})
    assert half.value.status == 400 and "expires_after" in half.value.message
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
