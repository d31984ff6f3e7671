"""The fine-tuning API's objects, shaped as OpenAI's published schemas have them (`OpenAIFile`,
`FineTuningJob`, `FineTuningJobEvent`, `FineTuningJobCheckpoint` and their lists; checked against
OpenAI's OpenAPI document in tests/test_conformance.py).

A job's stored record (`Job`) holds what the API shows plus what the job machine needs (the stage
it is in, the Ray job running it, the registry name it registers, how long its work has waited for
resources); `Job.api()` is the OpenAI object, with rayft's own fields under `x_rayft`.
"""

from __future__ import annotations

import secrets
import time
from enum import Enum
from typing import Literal

from pydantic import BaseModel, Field

from rayft.estimate import Estimate

FINE_TUNE, RESULTS = "fine-tune", "fine-tune-results"
PROMOTE_KEY = "promote_to"  # metadata naming the alias a job promotes its model to when the gate passes


class JobStatus(str, Enum):
    """OpenAI's job statuses (`paused`: what OpenAI's pause route answers)."""

    VALIDATING = "validating_files"
    QUEUED = "queued"
    RUNNING = "running"
    PAUSED = "paused"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)


FINISHED = tuple(s for s in JobStatus if s.finished)


class Stage(str, Enum):
    """Where a job is in its pipeline: validation and the gate run in the job machine, the rest as
    Ray jobs (`pipeline.py`)."""

    VALIDATE = "validate"
    DATA = "data"
    TRAIN = "train"
    EVAL = "eval"
    GATE = "gate"

    @property
    def on_cluster(self) -> bool:
        return self in (Stage.DATA, Stage.TRAIN, Stage.EVAL)


class ServiceError(Exception):
    """A request the API refuses: HTTP status, a message naming the field, the field, a code."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def new_id(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(12)}"


def now() -> int:
    return int(time.time())


class StoredFile(BaseModel):
    id: str
    project: str
    filename: str
    purpose: str
    bytes: int
    path: str
    created_at: int
    expires_at: int | None = None

    def api(self) -> dict:
        shown = {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
        }
        return shown | ({"expires_at": self.expires_at} if self.expires_at is not None else {})


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """As asked (numbers or "auto"); `beta` for DPO jobs only."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"
    beta: float | Literal["auto"] | None = None


class Job(BaseModel):
    id: str
    project: str
    created_at: int
    status: JobStatus = JobStatus.VALIDATING
    model: str  # what the caller sent: the base as the server names it, or a fine-tuned model
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    method: Literal["supervised", "dpo"] = "supervised"
    adaptation: Literal["lora", "full"] = "lora"
    init_from: str | None = None  # the exact version (NAME:VERSION) `model` named, when it continues one
    suffix: str | None = None
    seed: int = 0
    metadata: dict[str, str] | None = None
    name: str  # the registry name its model is registered under
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    error: JobError | None = None
    result_files: list[str] = Field(default_factory=list)
    trained_tokens: int | None = None
    estimate: Estimate | None = None
    estimated_finish: int | None = None
    stage: Stage | None = Stage.VALIDATE
    ray_job: str | None = None  # the Ray job running the stage
    stage_args: list[str] = Field(default_factory=list)  # what the stage's command was given
    started_at: int | None = None
    waiting_since: float | None = None  # when the stage's work was first seen waiting for resources
    waiting_reported: bool = False
    resubmits: int = 0  # times a lost stage was run again (serve.fine_tuning.on_lost_stage)
    stage_stopped: bool = False  # its stage's Ray job was stopped for a pause: it runs again on resume

    def api(self) -> dict:
        hyper = self.hyperparameters.model_dump(exclude={"beta"})
        method_hyper = hyper | ({"beta": self.hyperparameters.beta} if self.method == "dpo" else {})
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": self.project,
            "status": self.status.value,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "hyperparameters": hyper,
            "method": {"type": self.method, self.method: {"hyperparameters": method_hyper}},
            "result_files": self.result_files,
            "trained_tokens": self.trained_tokens,
            "error": self.error.model_dump() if self.error else None,
            "seed": self.seed,
            "estimated_finish": self.estimated_finish,
            "integrations": [],
            "metadata": self.metadata,
            "user_provided_suffix": self.suffix,
            "x_rayft": {
                "adaptation": self.adaptation,
                "init_from": self.init_from,
                "stage": self.stage.value if self.stage else None,
                "ray_job": self.ray_job,
                "registry_name": self.name,
                "estimate": self.estimate.model_dump() if self.estimate else None,
            },
        }


class Event(BaseModel):
    id: str
    job_id: str
    created_at: int
    level: Literal["info", "warn", "error"] = "info"
    message: str
    type: Literal["message", "metrics"] = "message"
    data: dict | None = None

    def api(self) -> dict:
        shown = {
            "id": self.id,
            "object": "fine_tuning.job.event",
            "created_at": self.created_at,
            "level": self.level,
            "message": self.message,
            "type": self.type,
        }
        return shown | ({"data": self.data} if self.data is not None else {})


class Checkpoint(BaseModel):
    """One epoch's end state a job's train stage registered: the version that serves it (its exact
    `NAME:VERSION`), the step, and the losses there (the validation loss is over the whole
    validation split, so it is OpenAI's `valid_loss` and `full_valid_loss` both)."""

    job_id: str
    model: str
    step: int
    created_at: int
    train_loss: float | None = None
    valid_loss: float | None = None

    @property
    def id(self) -> str:
        return f"ftckpt-{self.job_id.removeprefix('ftjob-')}-{self.step}"

    def api(self) -> dict:
        losses = {"train_loss": self.train_loss, "valid_loss": self.valid_loss, "full_valid_loss": self.valid_loss}
        return {
            "id": self.id,
            "object": "fine_tuning.job.checkpoint",
            "created_at": self.created_at,
            "fine_tuned_model_checkpoint": self.model,
            "fine_tuning_job_id": self.job_id,
            "step_number": self.step,
            "metrics": {"step": float(self.step)} | {k: float(v) for k, v in losses.items() if v is not None},
        }


def page(items: list[dict], has_more: bool, ids: bool = False) -> dict:
    """A list object; with `ids`, the first and last ids as OpenAI's files list has them (empty
    strings for an empty page: the schema wants strings)."""
    shown = {"object": "list", "data": items, "has_more": has_more}
    if ids:
        shown |= {"first_id": items[0]["id"] if items else "", "last_id": items[-1]["id"] if items else ""}
    return shown
