"""The fine-tuning API's DPO jobs, continued training and checkpoints, without Ray: OpenAI's `method:
{"type": "dpo"}` on a file of preference pairs (told from its first record, whatever its container)
and the config the job trains with (`train.method: dpo`, `train.dpo.beta`, `train.init_from`, the
epoch checkpoints, a runs folder of the job's own), `model` naming a fine-tuned model of the
caller's (the exact version it names now; another project's is the unknown model's 400), and the
checkpoints a job registered: listed newest first, paged, OpenAI's objects, each served by its name
to its project only."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conformance import assert_conforms
from hypothesis import given, settings
from hypothesis import strategies as st
from test_fine_tuning_units import ALICE, BOB, CHAT, PAIR, make_service, upload

from rayft.config import RayftConfig, load_config
from rayft.projects import Caller
from rayft.registry import Registry
from rayft.service import pipeline
from rayft.service.files import first_record, holds_preference_pairs
from rayft.service.objects import JobStatus, ServiceError, Stage
from rayft.service.requests import CreateFineTuningJobRequest, parse
from rayft.serving.routing import ModelRouter, ServedBase, UnknownModel

BASE = "/models/tiny"
PAIRS = json.dumps(PAIR) + "\n"


def create(service, caller: Caller, body: dict):
    return service.create(caller, parse(CreateFineTuningJobRequest, body))


def refused(service, caller: Caller, body: dict) -> ServiceError:
    with pytest.raises(ServiceError) as error:
        create(service, caller, body)
    return error.value


def register(registry: Registry, tmp_path, name: str, project: str | None, base=BASE, **fields):
    folder = tmp_path / "artifacts" / f"{name}-{len(registry.list())}"
    return registry.register(name, "adapter", base, str(folder), weights_hash="h", project=project, **fields)


@pytest.fixture
def service(tmp_path):
    return make_service(tmp_path, allow_full=True)


def test_a_dpo_job_takes_openais_method_and_a_file_of_preference_pairs(service):
    pairs, chat = upload(service, ALICE, PAIRS).id, upload(service, ALICE).id
    job = create(
        service,
        ALICE,
        {
            "model": "tiny",
            "training_file": pairs,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.25, "n_epochs": 2}}},
        },
    )
    shown = job.api()
    assert job.method == "dpo" and shown["method"]["type"] == "dpo"
    assert shown["method"]["dpo"]["hyperparameters"] == {
        "n_epochs": 2,
        "batch_size": "auto",
        "learning_rate_multiplier": "auto",
        "beta": 0.25,
    }
    auto = create(service, ALICE, {"model": "tiny", "training_file": pairs, "method": {"type": "dpo"}})
    assert auto.hyperparameters.beta == "auto"
    chat_validation = refused(
        service, ALICE, {"model": "tiny", "training_file": pairs, "validation_file": chat, "method": {"type": "dpo"}}
    )
    assert chat_validation.status == 400 and chat_validation.param == "validation_file"
    assert "preferred_output" in chat_validation.message
    supervised = create(service, ALICE, {"model": "tiny", "training_file": pairs})  # SFT on the preferred replies
    assert supervised.method == "supervised" and supervised.api()["method"] == {
        "type": "supervised",
        "supervised": {"hyperparameters": supervised.api()["hyperparameters"]},
    }


def test_preference_pairs_are_told_in_every_container(tmp_path):
    parquet = tmp_path / "pairs.parquet"
    pq.write_table(pa.Table.from_pylist([{"prompt": "hi", "chosen": "Hello!", "rejected": "what"}]), parquet)
    array = tmp_path / "pairs.json"
    array.write_text(json.dumps([PAIR, CHAT]))
    chat = tmp_path / "chat.jsonl"
    chat.write_text("\n\n" + json.dumps(CHAT) + "\n" + PAIRS)
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{not json\n" + PAIRS)
    assert holds_preference_pairs(str(parquet)) and holds_preference_pairs(str(array))
    assert not holds_preference_pairs(str(chat)) and not holds_preference_pairs(str(broken))


RECORDS = st.lists(
    st.dictionaries(st.text(max_size=8), st.none() | st.integers() | st.text(max_size=12), max_size=4),
    min_size=1,
    max_size=5,
)


@settings(max_examples=60, deadline=None)
@given(records=RECORDS, blank_lines=st.integers(0, 3), container=st.sampled_from(["jsonl", "json"]))
def test_the_first_record_is_read_back_as_written(tmp_path_factory, records, blank_lines, container):
    path = tmp_path_factory.mktemp("r") / f"data.{container}"
    if container == "jsonl":
        path.write_text("\n" * blank_lines + "\n".join(json.dumps(r) for r in records) + "\n")
    else:
        path.write_text(" " * blank_lines + json.dumps(records))
    assert first_record(str(path)) == records[0]


def test_a_dpo_job_continuing_a_model_trains_with_its_config(service, tmp_path):
    start = register(service.registry, tmp_path, "ft-support-bot", "support")
    service.registry.set_alias("ft-support-bot", "live", start.version)
    job = create(
        service,
        ALICE,
        {
            "model": "ft-support-bot:live",
            "training_file": upload(service, ALICE, PAIRS).id,
            "method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.5, "learning_rate_multiplier": 0.5}}},
        },
    )
    server = RayftConfig.model_validate(
        {"name": "svc", "model": {"base": BASE}, "train": {"dpo": {"loss": "ipo", "sft_weight": 0.1}}}
    )
    path = service.paths.config(job)
    pipeline.write_config(pipeline.job_config(server, job, ["/f/pairs.jsonl"], service.paths), path)
    train = load_config(path).train  # what the stage reads, validated
    assert train.method == "dpo" and train.init_from == "ft-support-bot:1" and train.epoch_checkpoints == 3
    assert (train.dpo.beta, train.dpo.tune, train.dpo.loss, train.dpo.sft_weight) == (0.5, "lora", "ipo", 0.1)
    assert train.learning_rate == pytest.approx(0.5 * 5e-6) and train.storage_path == f"{tmp_path}/runs/{job.id}"
    assert load_config(path).name == "ft-support-bot"  # the next version of the model it continues
    plain = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id})
    supervised = pipeline.job_config(server, plain, [], service.paths).train
    assert supervised.method == "lora" and supervised.init_from is None and supervised.dpo == server.train.dpo


def test_the_resumed_training_stage_continues_only_its_own_run(service, tmp_path):
    server = RayftConfig.model_validate({"name": "svc", "model": {"base": BASE}})
    job = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id, "suffix": "s"})
    twin = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id, "suffix": "s"})
    assert job.name == twin.name and not pipeline.run_begun(server, job, service.paths)
    (tmp_path / "runs" / twin.id / twin.name / f"{twin.name}-20261206-101010").mkdir(parents=True)
    assert not pipeline.run_begun(server, job, service.paths)  # the other job's run is not its own
    (tmp_path / "runs" / job.id / job.name / f"{job.name}-20261206-101011").mkdir(parents=True)
    assert pipeline.run_begun(server, job, service.paths)


def test_model_may_name_a_fine_tuned_model_the_caller_sees_trained_on_this_base(service, tmp_path):
    own = register(service.registry, tmp_path, "ft-support-bot", "support")
    register(service.registry, tmp_path, "ft-legal-bot", "legal")
    register(service.registry, tmp_path, "shared", None)
    register(service.registry, tmp_path, "ft-support-elsewhere", "support", base="/models/other")
    file_id = upload(service, ALICE).id
    continued = create(service, ALICE, {"model": "ft-support-bot", "training_file": file_id})
    assert (continued.init_from, continued.name, continued.api()["model"]) == (own.ref, own.name, "ft-support-bot")
    assert continued.api()["x_rayft"]["init_from"] == own.ref
    suffixed = create(service, ALICE, {"model": own.ref, "training_file": file_id, "suffix": "v2"})
    assert suffixed.name == "ft-support-v2" and suffixed.init_from == own.ref
    shared = create(service, ALICE, {"model": "shared:1", "training_file": file_id})
    assert shared.name == "ft-support-shared" and shared.init_from == "shared:1"  # the endpoint's own adapter

    unknown = refused(service, ALICE, {"model": "ft-support-gone:1", "training_file": file_id})
    theirs = refused(service, ALICE, {"model": "ft-legal-bot:1", "training_file": file_id})
    assert (
        (theirs.status, theirs.param, theirs.code)
        == (unknown.status, unknown.param, unknown.code)
        == (
            400,
            "model",
            "model_not_available",
        )
    )
    assert theirs.message == unknown.message.replace("ft-support-gone:1", "ft-legal-bot:1")  # told apart by nothing
    other_base = refused(service, ALICE, {"model": "ft-support-elsewhere:1", "training_file": file_id})
    assert other_base.param == "model" and "not an adapter of the base" in other_base.message
    full = refused(service, ALICE, {"model": own.ref, "training_file": file_id, "x_rayft": {"adaptation": "full"}})
    assert full.param == "x_rayft.adaptation"
    borrowed = refused(service, BOB, {"model": own.ref, "training_file": upload(service, BOB).id})
    assert borrowed.param == "model"


def test_checkpoints_are_the_jobs_epochs_newest_first_paged_and_served_to_its_project(service, tmp_path):
    """As the trainer registers them: each epoch's end a version aliased `ckpt-step-<step>`, or the
    final model itself when it was exported from that state; a later job of the same name moving the
    alias does not take the checkpoint from this one."""
    job = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id, "suffix": "bot"})
    own = {"data": {"out": str(service.paths.dataset(job))}}
    registry = service.registry
    register(registry, tmp_path, job.name, "support", config={"data": {"out": "/another/jobs/dataset"}})
    for step, epoch in ((2, 0), (4, 1), (4, 1)):  # step 4 registered twice: a run resumed while registering
        ended = register(registry, tmp_path, job.name, "support", config=own, metrics={"epoch": epoch, "step": step})
        registry.set_alias(job.name, f"ckpt-step-{step}", ended.version)
    final = register(registry, tmp_path, job.name, "support", config=own, metrics={"exported_step": 6})
    registry.set_alias(job.name, "ckpt-step-6", final.version)
    later = register(registry, tmp_path, job.name, "support", config={"data": {"out": "/a/later/jobs/dataset"}})
    registry.set_alias(job.name, "ckpt-step-6", later.version)
    for step, valid in ((2, 2.7), (4, None), (6, float("nan"))):
        data = {"step": step, "train_loss": 3.0 - step / 4} | ({"valid_loss": valid} if valid else {})
        service.store.add_event(job.id, f"Step {step}", kind="metrics", data=data)
    assert pipeline.job_versions(registry, job, service.paths).final == final

    listed = service.checkpoints(ALICE, job.id, None, 10)
    assert_conforms("ListFineTuningJobCheckpointsResponse", listed)
    shown = [(c["step_number"], c["fine_tuned_model_checkpoint"], c["metrics"]) for c in listed["data"]]
    assert shown == [
        (6, final.ref, {"step": 6.0, "train_loss": 1.5}),  # NaN left out
        (4, f"{job.name}:4", {"step": 4.0, "train_loss": 2.0}),  # the step's latest version
        (2, f"{job.name}:2", {"step": 2.0, "train_loss": 2.5, "valid_loss": 2.7, "full_valid_loss": 2.7}),
    ]
    first = service.checkpoints(ALICE, job.id, None, 2)
    rest = service.checkpoints(ALICE, job.id, first["last_id"], 2)
    assert first["has_more"] and not rest["has_more"]
    assert [c["id"] for c in first["data"] + rest["data"]] == [c["id"] for c in listed["data"]]
    assert first["first_id"] == listed["data"][0]["id"] == f"ftckpt-{job.id.removeprefix('ftjob-')}-6"

    router = ModelRouter(registry, ServedBase("tiny", BASE))
    name = listed["data"][1]["fine_tuned_model_checkpoint"]
    assert router.resolve(name, None, ALICE).served == name
    with pytest.raises(UnknownModel):
        router.resolve(name, None, BOB)


def test_the_train_stage_reports_its_final_model_and_its_checkpoints(service, tmp_path):
    from rayft.service.machine import Say
    from rayft.service.stages import PipelineWork

    job = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id})
    run = tmp_path / "run"
    run.mkdir()
    (run / pipeline.STEP_LOG).write_text("".join(json.dumps({"step": n, "loss": 2.0 / n}) + "\n" for n in (1, 2)))
    own = {"data": {"out": str(service.paths.dataset(job))}}
    ended = register(service.registry, tmp_path, job.name, "support", config=own, metrics={"epoch": 0, "step": 1})
    service.registry.set_alias(job.name, "ckpt-step-1", ended.version)
    final = register(service.registry, tmp_path, job.name, "support", config=own, metrics={"run_dir": str(run)})
    service.registry.set_alias(job.name, "ckpt-step-2", final.version)
    server = RayftConfig.model_validate({"name": "svc", "model": {"base": BASE}})
    work = PipelineWork(server, BASE, service.paths, service.store, service.files)
    say = Say()
    assert work.after_train(job, say) == ["--model", final.ref]
    said = [message for message, _ in say.events]
    assert said[-2:] == [
        f"Trained and registered {final.ref}",
        f"Epoch checkpoints: {final.ref} (step 2), {ended.ref} (step 1)",
    ]
    assert [options["data"]["step"] for _, options in say.events if options.get("kind") == "metrics"] == [1, 2]


def test_pause_and_resume_answer_the_job_and_say_so(service):
    job = create(service, ALICE, {"model": "tiny", "training_file": upload(service, ALICE).id})
    with pytest.raises(ServiceError) as validating:
        service.pause(ALICE, job.id)
    assert validating.value.status == 400 and "is validating_files;" in validating.value.message
    service.store.save_job(job.model_copy(update={"status": JobStatus.RUNNING, "stage": Stage.TRAIN}))
    assert service.pause(ALICE, job.id).api()["status"] == "paused"
    assert service.resume(ALICE, job.id).api()["status"] == "queued"
    said = [e["message"] for e in reversed(service.events(ALICE, job.id, None, 20)["data"])]
    assert said[-2:] == ["Job paused while running (stage: train)", "Job resumed (stage: train); queued"]
