"""What the fine-tuning routes do, for one caller (`rayft.projects.Caller`: a project, and whether
the key is an admin key). A project sees, downloads, deletes, cancels, pauses and resumes only its
own files and jobs; an admin key sees all. Another project's object is a 404, as if it did not exist.

`create` takes the typed request (`requests.py`), checks what types cannot (the base or the
fine-tuned model to continue, the files and what they hold for the method, the project's limits)
before anything is stored, and answers a 400 naming the field, or a 429 naming the limit when the
project already has its `max_unfinished_jobs`. Cancel, pause and resume are moves of the job
machine's `ASKED` table, made here and acted on by the runner.
"""

from __future__ import annotations

import re
from pathlib import Path

from rayft.config import FineTuningConfig
from rayft.projects import Caller, ProjectDirectory
from rayft.registry import ModelVersion, Registry, RegistryError
from rayft.service import pipeline
from rayft.service.files import FileStore, holds_preference_pairs
from rayft.service.machine import ASKED
from rayft.service.objects import (
    FINE_TUNE,
    Hyperparameters,
    Job,
    ServiceError,
    Stage,
    StoredFile,
    new_id,
    now,
    page,
)
from rayft.service.pipeline import ServicePaths
from rayft.service.requests import CreateFineTuningJobRequest
from rayft.service.store import ServiceStore

PAIRS = '{"input": {"messages": [...]}, "preferred_output": [...], "non_preferred_output": [...]}'
ASKED_EVENTS = {
    "cancel": "Job cancelled while {status} (stage: {stage})",
    "pause": "Job paused while {status} (stage: {stage})",
    "resume": "Job resumed (stage: {stage}); queued",
}


class FineTuningJobs:
    """The routes' operations over the store, for a server fine-tuning one base: `base_names` are
    the names clients send for it, `base_path` what its fine-tuned versions name as their base."""

    def __init__(
        self,
        config: FineTuningConfig,
        base_names: set[str],
        base_path: str,
        paths: ServicePaths,
        store: ServiceStore,
        files: FileStore,
    ):
        self.config, self.base_names, self.base_path, self.paths = config, base_names, base_path, paths
        self.store, self.files, self.projects = store, files, files.projects
        self.registry = Registry(paths.registry)

    @classmethod
    def open(
        cls,
        config: FineTuningConfig,
        base_names: set[str],
        base_path: str,
        paths: ServicePaths,
        projects: ProjectDirectory,
    ) -> FineTuningJobs:
        store = ServiceStore(paths.registry)
        return cls(config, base_names, base_path, paths, store, FileStore(config, store, paths.files, projects))

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

    def checkpoints(self, caller: Caller, job_id: str, after: str | None, limit: int) -> dict:
        """The epochs' end states the job's train stage registered (the last three), the latest
        first, each served by its exact ref."""
        job = self.visible_job(caller, job_id)
        registered = pipeline.job_versions(self.registry, job, self.paths).checkpoints
        steps = {event.data["step"]: event.data for event in self.store.metric_events(job.id)}
        shown = [pipeline.checkpoint_of(job, step, version, steps.get(step, {})).api() for step, version in registered]
        ids = [c["id"] for c in shown]
        if after is not None:
            shown = shown[ids.index(after) + 1 :] if after in ids else []
        return page(shown[:limit], len(shown) > limit, ids=True)

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Mark the job cancelled now; the runner stops its Ray job and registers nothing."""
        return self.ask(caller, job_id, "cancel")

    def pause(self, caller: Caller, job_id: str) -> Job:
        """Mark a queued or running job paused; the runner stops its stage's Ray job."""
        return self.ask(caller, job_id, "pause")

    def resume(self, caller: Caller, job_id: str) -> Job:
        """Put a paused job back in the queue; at its turn its stage runs again (training from its
        run's last checkpoint)."""
        return self.ask(caller, job_id, "resume")

    def ask(self, caller: Caller, job_id: str, action: str) -> Job:
        """Make the move `action` of the machine's `ASKED` table, and say so in the job's events."""
        move = ASKED[action]
        job, before = self.store.move_job(self.visible_job(caller, job_id).id, move.allowed, move.to)
        if before is None:
            raise refusal(job, action)
        stage = job.stage.value if job.stage else "none"
        self.store.add_event(job.id, ASKED_EVENTS[action].format(status=before.value, stage=stage))
        return job

    def create(self, caller: Caller, request: CreateFineTuningJobRequest) -> Job:
        start = self.starting_point(caller, request.model)
        training = self.training_file(caller, request.training_file, "training_file")
        validation = request.validation_file
        if validation is not None:
            validation = self.training_file(caller, validation, "validation_file").id
        method, chosen = request.chosen_method()
        if method == "dpo":
            for param, file_id in (("training_file", training.id), ("validation_file", validation)):
                if file_id is not None:
                    self.check_pairs(self.store.file(file_id), param)
        hyper = Hyperparameters(**chosen.model_dump())
        request.promote_to()  # an alias name, or a 400
        adaptation = (request.x_rayft.adaptation if request.x_rayft else None) or "lora"
        if adaptation == "full" and not self.config.allow_full:
            raise ServiceError(
                400,
                "x_rayft.adaptation: full fine-tuning is off on this server (serve.fine_tuning.allow_full)",
                "x_rayft.adaptation",
            )
        if adaptation == "full" and start is not None:
            raise ServiceError(
                400,
                f"x_rayft.adaptation: {start.ref} is an adapter, so training it further trains the adapter (lora)",
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
            method=method,
            adaptation=adaptation,
            init_from=start.ref if start else None,
            suffix=request.suffix,
            seed=request.seed or 0,
            metadata=request.metadata,
            name=job_name(caller.project, request.suffix, request.model, start),
            stage=Stage.VALIDATE,
        )
        self.store.add_job(job)
        self.store.add_event(
            job.id,
            f"Job created; validating {training.filename}",
            data={"method": method, "init_from": job.init_from},
        )
        return job

    def starting_point(self, caller: Caller, model: str) -> ModelVersion | None:
        """None for the base; for a fine-tuned model the caller sees (its project's, or the
        endpoint's own) that this server serves, the exact version it names now. Anything else is
        the 400 of a model this server does not fine-tune."""
        if model in self.base_names:
            return None
        try:
            version = self.registry.get(model)
        except RegistryError:
            version = None
        if version is None or not caller.sees(version.project):
            raise ServiceError(
                400,
                f"model: {model!r} is not a base this server fine-tunes nor a fine-tuned model of yours; use "
                f"{' or '.join(sorted(self.base_names))!r} or one of your models (GET /v1/models)",
                "model",
                "model_not_available",
            )
        if version.kind != "adapter" or version.base_model != self.base_path:
            raise ServiceError(
                400,
                f"model: {version.ref} is not an adapter of the base this server fine-tunes "
                f"({' or '.join(sorted(self.base_names))!r}), so it cannot be trained further here",
                "model",
                "model_not_available",
            )
        return version

    def check_pairs(self, stored: StoredFile, param: str) -> None:
        """A DPO job's file must hold preference pairs (told from its first record)."""
        if not holds_preference_pairs(stored.path):
            raise ServiceError(
                400,
                f"{param}: {stored.id} ({stored.filename}) holds no preference pairs, which a dpo job trains on; "
                f"each record is {PAIRS}",
                param,
                "invalid_file_format",
            )

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


def refusal(job: Job, action: str) -> ServiceError:
    """Why `action` cannot be done to `job` now: a cancel of an ended job is a 409 (as before), a
    pause or resume from the wrong state a 400 naming the state."""
    if action == "cancel":
        return ServiceError(409, f"job {job.id} already {job.status.value}", "fine_tuning_job_id", "job_finished")
    allowed = " or ".join(sorted(s.value for s in ASKED[action].allowed))
    return ServiceError(
        400,
        f"fine_tuning_job_id: job {job.id} is {job.status.value}; only a {allowed} job can be {action}d",
        "fine_tuning_job_id",
        "invalid_job_status",
    )


def job_name(project: str, suffix: str | None, model: str, start: ModelVersion | None) -> str:
    """The registry name a job registers: with a suffix, `ft-<project>-<suffix>`; continuing a model
    of its own project, that model's name (the next version of it); else `ft-<project>-<base>`."""
    if suffix is None and start is not None and start.project == project:
        return start.name
    return registry_name(project, suffix or (start.name if start else model))


def registry_name(project: str, stem: str) -> str:
    """`ft-<project>-<suffix or base>`: the jobs of one project and suffix register versions of one
    model, so an alias on it (`metadata.promote_to`) compares each new version with the one it
    would replace, and no project's job can make (or move an alias of) another project's name:
    project names hold no '-'."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:64] or "model"
    return f"ft-{project}-{clean}"
