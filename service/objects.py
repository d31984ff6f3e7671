"""The fine-tuning API's objects, shaped as OpenAI's (files, jobs, events, checkpoints), and the
create request checked field by field.

A job's stored record (`Job`) holds what the API shows plus what the runner needs (the stage it is
in, the Ray job running it, the registry name it registers); `Job.api()` is the OpenAI object, with
rayft's own fields under `x_rayft`.
"""

from __future__ import annotations

import re
import secrets
import time
from typing import Literal

from pydantic import BaseModel, Field

from rayft.estimate import Estimate

FINE_TUNE, RESULTS = "fine-tune", "fine-tune-results"
STATUSES = ("validating_files", "queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
SUFFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,39}$")
PROMOTE_KEY = "promote_to"  # metadata naming the alias a job promotes its model to when the gate passes


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
    owner: str
    filename: str
    purpose: str
    bytes: int
    path: str
    created_at: int

    def api(self) -> dict:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": self.created_at,
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
            "expires_at": None,
        }


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class Hyperparameters(BaseModel):
    """As asked (numbers or "auto"); a running job shows the numbers its plan resolved."""

    n_epochs: int | Literal["auto"] = "auto"
    batch_size: int | Literal["auto"] = "auto"
    learning_rate_multiplier: float | Literal["auto"] = "auto"


class Job(BaseModel):
    id: str
    owner: str
    created_at: int
    status: str = "validating_files"
    model: str  # the base, as the server names it
    training_file: str
    validation_file: str | None = None
    hyperparameters: Hyperparameters = Field(default_factory=Hyperparameters)
    adaptation: Literal["lora", "full"] = "lora"
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
    stage: str | None = None  # validate, data, train, eval, gate
    ray_job: str | None = None  # the Ray job running the stage
    started_at: int | None = None

    def api(self) -> dict:
        hyper = self.hyperparameters.model_dump()
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "model": self.model,
            "fine_tuned_model": self.fine_tuned_model,
            "organization_id": "rayft",
            "status": self.status,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "hyperparameters": hyper,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyper}},
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
                "stage": self.stage,
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
        return {
            "id": self.id,
            "object": "fine_tuning.job.event",
            "created_at": self.created_at,
            "level": self.level,
            "message": self.message,
            "type": self.type,
            "data": self.data,
        }


def checkpoint_api(job: Job, step: int, metrics: dict) -> dict:
    """The job's registered model as OpenAI's checkpoint object: servable by its name."""
    return {
        "id": f"ftckpt-{job.id.removeprefix('ftjob-')}-{step}",
        "object": "fine_tuning.job.checkpoint",
        "created_at": job.finished_at or now(),
        "fine_tuned_model_checkpoint": job.fine_tuned_model,
        "fine_tuning_job_id": job.id,
        "step_number": step,
        "metrics": {"step": step} | metrics,
    }


def page(items: list[dict], has_more: bool) -> dict:
    return {"object": "list", "data": items, "has_more": has_more}
