"""What the fine-tuning routes do, for one caller (`rayft.projects.Caller`: a project, and whether
the key is an admin key). A project sees, downloads, deletes and cancels only its own files and
jobs; an admin key sees all. Another project's object is a 404, as if it did not exist.

`create` takes the typed request (`requests.py`), checks what types cannot (the base, the files,
the project's limits) before anything is stored, and answers a 400 naming the field, or a 429
naming the limit when the project already has its `max_unfinished_jobs`.
"""

from __future__ import annotations

import re
from pathlib import Path

from rayft.config import FineTuningConfig
from rayft.projects import Caller, ProjectDirectory
from rayft.service.files import FileStore
from rayft.service.objects import (
    FINE_TUNE,
    Hyperparameters,
    Job,
    JobStatus,
    ServiceError,
    Stage,
    StoredFile,
    checkpoint_api,
    new_id,
    now,
    page,
)
from rayft.service.pipeline import ServicePaths
from rayft.service.requests import CreateFineTuningJobRequest
from rayft.service.store import ServiceStore, StaleJob


class FineTuningJobs:
    """The routes' operations over the store, for a server fine-tuning one base."""

    def __init__(self, config: FineTuningConfig, base_names: set[str], store: ServiceStore, files: FileStore):
        self.config, self.base_names, self.store, self.files = config, base_names, store, files
        self.projects = files.projects

    @classmethod
    def open(
        cls, config: FineTuningConfig, base_names: set[str], paths: ServicePaths, projects: ProjectDirectory
    ) -> FineTuningJobs:
        store = ServiceStore(paths.registry)
        return cls(config, base_names, store, FileStore(config, store, paths.files, projects))

    # files
    def visible_file(self, caller: Caller, file_id: str, param: str = "file_id") -> StoredFile:
        stored = self.store.file(file_id)
        if stored is None or not caller.owns(stored.project):
            raise ServiceError(404, f"{param}: no file {file_id!r}", param, "file_not_found")
        return stored

    def list_files(self, caller: Caller, purpose: str | None, after: str | None, limit: int) -> dict:
        files, more = self.store.files(None if caller.admin else caller.project, purpose, after, limit)
        return page([f.api() for f in files], more, ids=True)

    def delete_file(self, caller: Caller, file_id: str) -> dict:
        stored = self.visible_file(caller, file_id)
        self.files.delete(stored)
        return {"id": stored.id, "object": "file", "deleted": True}

    # jobs
    def visible_job(self, caller: Caller, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None or not caller.owns(job.project):
            raise ServiceError(404, f"fine_tuning_job_id: no job {job_id!r}", "fine_tuning_job_id", "job_not_found")
        return job

    def list_jobs(self, caller: Caller, after: str | None, limit: int) -> dict:
        jobs, more = self.store.jobs(None if caller.admin else caller.project, after, limit)
        return page([j.api() for j in jobs], more)

    def events(self, caller: Caller, job_id: str, after: str | None, limit: int) -> dict:
        job = self.visible_job(caller, job_id)
        events, more = self.store.events(job.id, after, limit)
        return page([e.api() for e in events], more)

    def checkpoints(self, caller: Caller, job_id: str) -> dict:
        """The registered model of a succeeded job, with its last step's metrics."""
        job = self.visible_job(caller, job_id)
        if job.status != JobStatus.SUCCEEDED or not job.fine_tuned_model:
            return page([], False, ids=True)
        steps = self.store.metric_events(job.id)
        last = steps[-1].data if steps else {"step": 0}
        metrics = {k: float(v) for k, v in last.items() if k in ("train_loss", "valid_loss")}
        return page([checkpoint_api(job, last["step"], metrics)], False, ids=True)

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Mark the job cancelled now; the runner stops its Ray job and registers nothing."""
        for _ in range(3):  # the runner may move the job on between our read and write
            job = self.visible_job(caller, job_id)
            if job.status.finished:
                raise ServiceError(
                    409, f"job {job.id} already {job.status.value}", "fine_tuning_job_id", "job_finished"
                )
            status = job.status
            job.status, job.finished_at = JobStatus.CANCELLED, now()
            try:
                self.store.save_job(job, expected_status=status)
            except StaleJob:
                continue
            stage = job.stage.value if job.stage else "none"
            self.store.add_event(job.id, f"Job cancelled while {status.value} (stage: {stage})")
            return job
        raise ServiceError(409, f"job {job_id} is changing state; try again", "fine_tuning_job_id", "job_busy")

    def create(self, caller: Caller, request: CreateFineTuningJobRequest) -> Job:
        if request.model not in self.base_names:
            raise ServiceError(
                400,
                f"model: {request.model!r} is not a base this server fine-tunes; use "
                f"{' or '.join(sorted(self.base_names))!r}",
                "model",
                "model_not_available",
            )
        training = self.training_file(caller, request.training_file, "training_file")
        validation = request.validation_file
        if validation is not None:
            validation = self.training_file(caller, validation, "validation_file").id
        hyper = Hyperparameters(**request.chosen_hyperparameters().model_dump())
        request.promote_to()  # an alias name, or a 400
        adaptation = (request.x_rayft.adaptation if request.x_rayft else None) or "lora"
        if adaptation == "full" and not self.config.allow_full:
            raise ServiceError(
                400,
                "x_rayft.adaptation: full fine-tuning is off on this server (serve.fine_tuning.allow_full)",
                "x_rayft.adaptation",
            )
        limit = self.projects.limits(caller.project).max_unfinished_jobs
        if self.store.unfinished_jobs(caller.project) >= limit:
            setting = self.projects.limit_setting(caller.project, "max_unfinished_jobs")
            raise ServiceError(
                429,
                f"this project has {limit} unfinished jobs, its limit ({setting}); wait for one to end or cancel one",
                None,
                "rate_limit_exceeded",
            )
        job = Job(
            id=new_id("ftjob"),
            project=caller.project,
            created_at=now(),
            model=request.model,
            training_file=training.id,
            validation_file=validation,
            hyperparameters=hyper,
            adaptation=adaptation,
            suffix=request.suffix,
            seed=request.seed or 0,
            metadata=request.metadata,
            name=registry_name(caller.project, request.suffix or request.model),
            stage=Stage.VALIDATE,
        )
        self.store.add_job(job)
        self.store.add_event(job.id, f"Job created; validating {training.filename}")
        return job

    def training_file(self, caller: Caller, file_id: str, param: str) -> StoredFile:
        try:
            stored = self.visible_file(caller, file_id, param)
        except ServiceError as missing:  # a field of the request that names nothing usable
            raise ServiceError(400, missing.message, param, missing.code) from None
        if stored.purpose != FINE_TUNE:
            raise ServiceError(
                400, f"{param}: {file_id} is a '{stored.purpose}' file; upload with purpose '{FINE_TUNE}'", param
            )
        if not Path(stored.path).is_file():
            raise ServiceError(400, f"{param}: {file_id}'s bytes are gone from the server", param)
        return stored


def registry_name(project: str, stem: str) -> str:
    """`ft-<project>-<suffix or base>`: the jobs of one project and suffix register versions of one
    model, so an alias on it (`metadata.promote_to`) compares each new version with the one it
    would replace, and no project's job can make (or move an alias of) another project's name:
    project names hold no '-'."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:64] or "model"
    return f"ft-{project}-{clean}"
