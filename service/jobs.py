"""What the fine-tuning routes do, for one caller: an owner (a digest of the API key) and whether
the key is an admin key. A key sees, downloads, deletes and cancels only its own files and jobs;
an admin key sees all. Someone else's object is a 404, as if it did not exist.

`create` checks every field of the request before anything is stored and answers a 400 naming the
first bad one (`hyperparameters.n_epochs`, `training_file`, ...), a 429 naming the limit when the key
already has `serve.fine_tuning.max_jobs_per_key` unfinished jobs.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from rayft.config import FineTuningConfig
from rayft.registry_records import ALIAS_PATTERN
from rayft.service.files import FileStore
from rayft.service.objects import (
    FINE_TUNE,
    FINISHED,
    PROMOTE_KEY,
    SUFFIX,
    Hyperparameters,
    Job,
    ServiceError,
    StoredFile,
    checkpoint_api,
    new_id,
    now,
    page,
)
from rayft.service.pipeline import ServicePaths
from rayft.service.store import ServiceStore, StaleJob

CREATE_FIELDS = {
    "model",
    "training_file",
    "validation_file",
    "hyperparameters",
    "method",
    "suffix",
    "seed",
    "metadata",
    "integrations",
    "x_rayft",
}
# name: (smallest, largest) a number may be
HYPERPARAMETERS = {"n_epochs": (1, 50), "batch_size": (1, 1024), "learning_rate_multiplier": (1e-3, 100.0)}
MAX_LIMIT = 100


@dataclass(frozen=True)
class Caller:
    owner: str
    admin: bool = False


class FineTuningJobs:
    """The routes' operations over the store, for a server fine-tuning one base."""

    def __init__(self, config: FineTuningConfig, base_names: set[str], store: ServiceStore, files: FileStore):
        self.config, self.base_names, self.store, self.files = config, base_names, store, files

    @classmethod
    def open(cls, config: FineTuningConfig, base_names: set[str], paths: ServicePaths) -> FineTuningJobs:
        store = ServiceStore(paths.registry)
        return cls(config, base_names, store, FileStore(config, store, paths.files))

    # files
    def visible_file(self, caller: Caller, file_id: str, param: str = "file_id") -> StoredFile:
        stored = self.store.file(file_id) if isinstance(file_id, str) else None
        if stored is None or not (caller.admin or stored.owner == caller.owner):
            raise ServiceError(404, f"{param}: no file {file_id!r}", param, "file_not_found")
        return stored

    def list_files(self, caller: Caller, purpose: str | None, after: str | None, limit: int) -> dict:
        files, more = self.store.files(None if caller.admin else caller.owner, purpose, after, checked_limit(limit))
        return page([f.api() for f in files], more)

    def delete_file(self, caller: Caller, file_id: str) -> dict:
        stored = self.visible_file(caller, file_id)
        self.store.delete_file(stored.id)
        self.files.remove(stored)
        return {"id": stored.id, "object": "file", "deleted": True}

    # jobs
    def visible_job(self, caller: Caller, job_id: str) -> Job:
        job = self.store.job(job_id)
        if job is None or not (caller.admin or job.owner == caller.owner):
            raise ServiceError(404, f"fine_tuning_job_id: no job {job_id!r}", "fine_tuning_job_id", "job_not_found")
        return job

    def list_jobs(self, caller: Caller, after: str | None, limit: int) -> dict:
        jobs, more = self.store.jobs(None if caller.admin else caller.owner, after, checked_limit(limit))
        return page([j.api() for j in jobs], more)

    def events(self, caller: Caller, job_id: str, after: str | None, limit: int) -> dict:
        job = self.visible_job(caller, job_id)
        events, more = self.store.events(job.id, after, checked_limit(limit))
        return page([e.api() for e in events], more)

    def checkpoints(self, caller: Caller, job_id: str) -> dict:
        """The registered model of a succeeded job, with its last step's metrics."""
        job = self.visible_job(caller, job_id)
        if job.status != "succeeded" or not job.fine_tuned_model:
            return page([], False)
        steps = self.store.metric_events(job.id)
        last = steps[-1].data if steps else {"step": 0}
        metrics = {k: v for k, v in last.items() if k in ("train_loss", "valid_loss")}
        return page([checkpoint_api(job, last["step"], metrics)], False)

    def cancel(self, caller: Caller, job_id: str) -> Job:
        """Mark the job cancelled now; the runner stops its Ray job and registers nothing."""
        for _ in range(3):  # the runner may move the job on between our read and write
            job = self.visible_job(caller, job_id)
            if job.status in FINISHED:
                raise ServiceError(409, f"job {job.id} already {job.status}", "fine_tuning_job_id", "job_finished")
            status = job.status
            job.status, job.finished_at = "cancelled", now()
            try:
                self.store.save_job(job, expected_status=status)
            except StaleJob:
                continue
            self.store.add_event(job.id, f"Job cancelled while {status} (stage: {job.stage or 'none'})")
            return job
        raise ServiceError(409, f"job {job_id} is changing state; try again", "fine_tuning_job_id", "job_busy")

    def create(self, caller: Caller, body: dict) -> Job:
        unknown = sorted(set(body) - CREATE_FIELDS)
        if unknown:
            raise ServiceError(
                400, f"{unknown[0]}: unknown field (known: {', '.join(sorted(CREATE_FIELDS))})", unknown[0]
            )
        model = body.get("model")
        if not isinstance(model, str) or model not in self.base_names:
            raise ServiceError(
                400,
                f"model: {model!r} is not a base this server fine-tunes; use {' or '.join(sorted(self.base_names))!r}",
                "model",
                "model_not_available",
            )
        training = self.training_file(caller, body.get("training_file"), "training_file")
        validation = body.get("validation_file")
        if validation is not None:
            validation = self.training_file(caller, validation, "validation_file").id
        hyper = hyperparameters(body)
        suffix = body.get("suffix")
        if suffix is not None and not (isinstance(suffix, str) and SUFFIX.fullmatch(suffix)):
            raise ServiceError(
                400, "suffix: 1-40 letters, digits, '_', '.', '-', starting with a letter or digit", "suffix"
            )
        seed = body.get("seed", 0)
        if seed is None:
            seed = 0
        if not isinstance(seed, int) or isinstance(seed, bool) or not 0 <= seed < 2**31:
            raise ServiceError(400, "seed: an integer from 0 to 2147483647", "seed")
        metadata = checked_metadata(body.get("metadata"))
        if body.get("integrations"):
            raise ServiceError(400, "integrations: not supported by this server", "integrations")
        adaptation = self.adaptation(body.get("x_rayft"))
        if self.store.unfinished_jobs(caller.owner) >= self.config.max_jobs_per_key:
            raise ServiceError(
                429,
                f"this key has {self.config.max_jobs_per_key} unfinished jobs, its limit "
                "(serve.fine_tuning.max_jobs_per_key); wait for one to finish or cancel one",
                None,
                "rate_limit_exceeded",
            )
        job_id = new_id("ftjob")
        job = Job(
            id=job_id,
            owner=caller.owner,
            created_at=now(),
            model=model,
            training_file=training.id,
            validation_file=validation,
            hyperparameters=hyper,
            adaptation=adaptation,
            suffix=suffix,
            seed=seed,
            metadata=metadata,
            name=registry_name(suffix or model),
            stage="validate",
        )
        self.store.add_job(job)
        self.store.add_event(job.id, f"Job created; validating {training.filename}")
        return job

    def training_file(self, caller: Caller, file_id, param: str) -> StoredFile:
        if not isinstance(file_id, str):
            raise ServiceError(400, f"{param}: a file id (from POST /v1/files) is required", param)
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

    def adaptation(self, extension) -> str:
        if extension is None:
            return "lora"
        choice = extension.get("adaptation", "lora") if isinstance(extension, dict) else None
        if choice not in ("lora", "full") or set(extension) - {"adaptation"}:
            raise ServiceError(400, "x_rayft: {'adaptation': 'lora' | 'full'} is all it may hold", "x_rayft.adaptation")
        if choice == "full" and not self.config.allow_full:
            raise ServiceError(
                400,
                "x_rayft.adaptation: full fine-tuning is off on this server (serve.fine_tuning.allow_full)",
                "x_rayft.adaptation",
            )
        return choice


def checked_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise ServiceError(400, f"limit: from 1 to {MAX_LIMIT}", "limit")
    return limit


def hyperparameters(body: dict) -> Hyperparameters:
    """From `hyperparameters` or `method.supervised.hyperparameters` (not both), each value a number
    in its range or "auto"."""
    method = body.get("method")
    given = body.get("hyperparameters")
    if method is not None:
        if not isinstance(method, dict) or method.get("type") != "supervised":
            raise ServiceError(400, "method.type: only 'supervised' is offered", "method.type")
        supervised = method.get("supervised") or {}
        if not isinstance(supervised, dict) or set(supervised) - {"hyperparameters"}:
            raise ServiceError(400, "method.supervised: may hold 'hyperparameters' only", "method.supervised")
        if supervised.get("hyperparameters") is not None:
            if given is not None:
                raise ServiceError(400, "hyperparameters: give them once, here or in method", "hyperparameters")
            given = supervised["hyperparameters"]
    given = {} if given is None else given
    if not isinstance(given, dict):
        raise ServiceError(400, "hyperparameters: an object", "hyperparameters")
    values = {}
    for name, value in given.items():
        param = f"hyperparameters.{name}"
        if name not in HYPERPARAMETERS:
            raise ServiceError(400, f"{param}: unknown (known: {', '.join(HYPERPARAMETERS)})", param)
        low, high = HYPERPARAMETERS[name]
        integer = name != "learning_rate_multiplier"
        number = isinstance(value, int) if integer else isinstance(value, (int, float))
        if value == "auto" or value is None:
            continue
        if isinstance(value, bool) or not number or not low <= value <= high:
            kind = "an integer" if integer else "a number"
            raise ServiceError(400, f'{param}: "auto" or {kind} from {low:g} to {high:g}, got {value!r}', param)
        values[name] = value
    return Hyperparameters(**values)


def checked_metadata(metadata) -> dict[str, str] | None:
    """OpenAI's rules (at most 16 pairs, keys ≤ 64 and values ≤ 512 characters), and an alias name
    under `promote_to`."""
    if metadata is None:
        return None
    if not isinstance(metadata, dict) or len(metadata) > 16:
        raise ServiceError(400, "metadata: an object of at most 16 string pairs", "metadata")
    for key, value in metadata.items():
        if not isinstance(value, str) or len(key) > 64 or len(value) > 512:
            raise ServiceError(400, f"metadata.{key[:64]}: keys up to 64 and values up to 512 characters", "metadata")
    alias = metadata.get(PROMOTE_KEY)
    if alias is not None and not ALIAS_PATTERN.fullmatch(alias):
        raise ServiceError(400, f"metadata.{PROMOTE_KEY}: {alias!r} is not an alias name", f"metadata.{PROMOTE_KEY}")
    return metadata


def registry_name(stem: str) -> str:
    """`ft-<suffix or base>`: the jobs of one suffix register versions of one model, so an alias on
    it (`metadata.promote_to`) compares each new version with the one it would replace."""
    clean = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-.")[:40] or "model"
    return f"ft-{clean}"
