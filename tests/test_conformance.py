"""What rayft's OpenAI-shaped routes answer, checked against OpenAI's published schemas (the pinned
subset in openai_schema/, `conformance.py`), without a server: the fine-tuning objects in every
state they can be in, the list pages, the error body, and the chat/completion/model bodies the
ingress builds with vLLM's protocol models. The live routes are checked over HTTP in
test_fine_tuning_api.py and test_serving.py."""

import json

import pytest
from conformance import assert_conforms, document, violations

from rayft.estimate import Estimate
from rayft.service.objects import (
    Checkpoint,
    Event,
    Hyperparameters,
    Job,
    JobError,
    JobStatus,
    Stage,
    StoredFile,
    page,
)


def stored_file(**changes) -> StoredFile:
    base = {"id": "file-1", "project": "support", "filename": "t.jsonl", "purpose": "fine-tune", "bytes": 9}
    return StoredFile(**(base | {"path": "/x/t.jsonl", "created_at": 1} | changes))


def job(status: JobStatus, **changes) -> Job:
    fields = {"id": "ftjob-1", "project": "support", "created_at": 1, "model": "tiny", "training_file": "file-1"}
    return Job(**(fields | {"name": "ft-x", "status": status} | changes))


JOBS = [
    job(JobStatus.VALIDATING),
    job(
        JobStatus.QUEUED,
        stage=None,
        estimate=Estimate(
            records=3, tokens=9, epochs=1, steps=1, trained_tokens=9, seconds=1.0, gpus=0, gpu_hours=0, cost=0
        ),
        estimated_finish=5,
    ),
    job(
        JobStatus.RUNNING,
        stage=Stage.TRAIN,
        ray_job="rayft-train-x",
        hyperparameters=Hyperparameters(n_epochs=2, batch_size=8, learning_rate_multiplier=0.5),
    ),
    job(
        JobStatus.SUCCEEDED,
        stage=None,
        fine_tuned_model="ft-x:1",
        finished_at=9,
        trained_tokens=90,
        result_files=["file-2"],
        metadata={"promote_to": "prod"},
        suffix="x",
        validation_file="file-3",
    ),
    job(
        JobStatus.RUNNING,
        stage=Stage.TRAIN,
        method="dpo",
        hyperparameters=Hyperparameters(n_epochs=2, beta=0.2),
        model="ft-support-x:1",
        init_from="ft-support-x:1",
    ),
    job(JobStatus.QUEUED, stage=None, method="dpo", hyperparameters=Hyperparameters(beta="auto")),
    job(JobStatus.PAUSED, stage=Stage.TRAIN, ray_job="rayft-train-x", stage_stopped=True),
    job(JobStatus.FAILED, error=JobError(code="stage_lost", message="gone"), finished_at=9),
    job(JobStatus.FAILED, error=JobError(code="invalid_training_file", message="line 2", param="training_file")),
    job(JobStatus.CANCELLED, finished_at=9),
]


def test_files_and_their_lists_are_openai_files():
    plain, expiring = stored_file(), stored_file(id="file-2", expires_at=3601)
    for item in (plain, expiring, stored_file(purpose="fine-tune-results")):
        assert_conforms("OpenAIFile", item.api())
    assert_conforms("ListFilesResponse", page([plain.api(), expiring.api()], True, ids=True))
    assert_conforms("ListFilesResponse", page([], False, ids=True))
    assert_conforms("DeleteFileResponse", {"id": "file-1", "object": "file", "deleted": True})


@pytest.mark.parametrize("shown", JOBS, ids=[f"{j.status.value}-{i}" for i, j in enumerate(JOBS)])
def test_jobs_in_every_state_are_openai_fine_tuning_jobs(shown):
    assert_conforms("FineTuningJob", shown.api())


def test_job_lists_events_and_checkpoints_conform():
    assert_conforms("ListPaginatedFineTuningJobsResponse", page([j.api() for j in JOBS], False))
    events = [
        Event(id="ftevent-1", job_id="ftjob-1", created_at=1, message="Job created"),
        Event(id="ftevent-2", job_id="ftjob-1", created_at=2, level="warn", message="Stage data is waiting"),
        Event(id="ftevent-3", job_id="ftjob-1", created_at=3, type="metrics", message="Step 1", data={"step": 1}),
    ]
    assert_conforms("ListFineTuningJobEventsResponse", page([e.api() for e in events], True))
    with_validation = Checkpoint(
        job_id="ftjob-1", model="ft-x:3", step=6, created_at=9, train_loss=1.5, valid_loss=1.7
    ).api()
    without = Checkpoint(job_id="ftjob-1", model="ft-x:2", step=3, created_at=8, train_loss=2.0).api()
    for checkpoint in (with_validation, without):
        assert_conforms("FineTuningJobCheckpoint", checkpoint)
    assert with_validation["metrics"] == {"step": 6.0, "train_loss": 1.5, "valid_loss": 1.7, "full_valid_loss": 1.7}
    assert without["metrics"] == {"step": 3.0, "train_loss": 2.0}  # no validation: omitted, not null
    assert_conforms("ListFineTuningJobCheckpointsResponse", page([with_validation, without], False, ids=True))
    assert_conforms("ListFineTuningJobCheckpointsResponse", page([], False, ids=True))


def test_a_dpo_jobs_method_carries_its_beta_and_a_paused_job_is_what_openais_pause_answers():
    dpo = JOBS[4].api()
    assert dpo["method"] == {
        "type": "dpo",
        "dpo": {
            "hyperparameters": {"n_epochs": 2, "batch_size": "auto", "learning_rate_multiplier": "auto", "beta": 0.2}
        },
    }
    assert "beta" not in dpo["hyperparameters"] and dpo["model"] == "ft-support-x:1"
    assert_conforms("FineTuneDPOMethod", dpo["method"]["dpo"])
    assert JOBS[3].api()["method"]["supervised"]["hyperparameters"] == JOBS[3].api()["hyperparameters"]
    # OpenAI's own example answer of POST .../pause is a job in status "paused" (its enum lacks it)
    assert document()["example_statuses"]["POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause"] == "paused"
    assert_conforms(document()["routes"]["POST /v1/fine_tuning/jobs/{fine_tuning_job_id}/pause"], JOBS[6].api())


def test_every_refusal_is_an_openai_error_body():
    from rayft.serving.errors import ApiError

    for error in (ApiError(400, "limit: bad", param="limit"), ApiError(404, "no job", code="job_not_found")):
        assert_conforms("ErrorResponse", error.body())


def test_what_the_schema_check_catches():
    """The check itself fails on what OpenAI's clients would reject: a file without a status, an
    unknown job status, a chat choice without logprobs."""
    shown = stored_file().api()
    del shown["status"]
    assert violations("OpenAIFile", shown)
    assert violations("FineTuningJob", JOBS[0].api() | {"status": "sleeping"})
    dpo = JOBS[4].api()
    assert violations("FineTuningJob", dpo | {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 3}}}})
    assert violations("ListFilesResponse", {"object": "list", "data": [], "has_more": False})  # no first_id


def test_chat_completion_and_model_bodies_conform():
    from rayft.serving import openai_api

    chat = json.loads(openai_api.chat_response("chatcmpl-1", 1, "tiny", "Category: billing", "stop", 5, 3))
    assert_conforms("CreateChatCompletionResponse", chat)
    text = json.loads(openai_api.completion_response("cmpl-1", 1, "tiny", "Category: billing", "length", 5, 3))
    assert_conforms("CreateCompletionResponse", text)
    for role, piece, finish in ((True, "", None), (False, "Cat", None), (False, "", "stop")):
        chunk = openai_api.chat_chunk("chatcmpl-1", "tiny", 1, piece, finish, role=role)
        assert_conforms("CreateChatCompletionStreamResponse", json.loads(chunk.removeprefix("data: ")))
    usage_chunk = openai_api.chat_chunk("chatcmpl-1", "tiny", 1, None, None, usage_info=openai_api.usage(5, 3))
    assert_conforms("CreateChatCompletionStreamResponse", json.loads(usage_chunk.removeprefix("data: ")))
    cards = openai_api.model_list("tiny", [("tiny", {"weights_hash": "h"}), ("support:1", {"resolves_to": "x"})], 512)
    assert_conforms("ListModelsResponse", cards)
