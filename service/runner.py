"""The job runner: one Serve replica that moves every fine-tuning job along its stages
(`pipeline.py`), from the rows in the registry's database, so a restarted server picks up where the
last one stopped: a stage's Ray job that kept running on the cluster is watched again, not started
again.

Every `serve.fine_tuning.poll_s` (or at once when a route wakes it) it
1. finishes cancels: stops the cancelled job's Ray job and deletes anything it registered;
2. validates new jobs (→ queued, with the estimate; or failed, naming the lines);
3. advances running jobs: step metrics while training, the next stage when one succeeds, the
   job's failure (with the stage's last error line) when one fails;
4. starts queued jobs in order while fewer than `serve.fine_tuning.max_running_jobs` run.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from pathlib import Path

from ray import serve

from rayft import storage
from rayft.cluster.client import Cluster, ClusterError
from rayft.cluster.submit import submit_stage
from rayft.config import RayftConfig
from rayft.data.inspect import check_files
from rayft.estimate import estimate
from rayft.eval.promotion import PromotionRefused, promote, stored_report
from rayft.plan import PlanError
from rayft.registry import ModelVersion, Registry, RegistryError
from rayft.service import pipeline
from rayft.service.files import FileStore
from rayft.service.objects import PROMOTE_KEY, Job, JobError, now
from rayft.service.pipeline import ServicePaths
from rayft.service.store import ServiceStore, StaleJob

logger = logging.getLogger("ray.serve")
FINISHED_RAY = ("SUCCEEDED", "FAILED", "STOPPED")


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = JobError(code=code, message=message, param=param)


@serve.deployment(name="fine_tuning", num_replicas=1, ray_actor_options={"num_cpus": 0})
class JobRunner:
    def __init__(self, server_config: dict, base_path: str, paths: ServicePaths):
        self.server = RayftConfig.model_validate(server_config)
        self.config = self.server.serve.fine_tuning
        self.base_path, self.paths = base_path, paths
        self.store = ServiceStore(paths.registry)
        self.files = FileStore(self.config, self.store, paths.files)
        self.registry = Registry(paths.registry)
        self._cluster: Cluster | None = None
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run_forever())

    async def wake(self) -> None:
        """Look at the jobs now (a job was created or cancelled)."""
        self.wakeup.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.tick)
            except Exception:  # a bug of ours must not stop every later job
                logger.exception("rayft fine-tuning: the job runner's pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.config.poll_s)
            self.wakeup.clear()

    def __del__(self):
        self.task.cancel()

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self.config.jobs_address)
        return self._cluster

    # --- one pass ------------------------------------------------------------------------------
    def tick(self) -> None:
        for job in self.store.jobs_in("cancelled"):
            if job.stage is not None:
                self.step(job, self.finish_cancel)
        for job in self.store.jobs_in("validating_files"):
            self.step(job, self.validate)
        for job in self.store.jobs_in("running"):
            self.step(job, self.advance)
        free = self.config.max_running_jobs - len(self.store.jobs_in("running"))
        for job in self.store.jobs_in("queued")[: max(free, 0)]:
            self.step(job, self.start)

    def step(self, job: Job, action) -> None:
        """Run one action on a job: a job cancelled meanwhile is left to the next pass, an
        unreachable cluster is tried again, and anything else fails the job with the reason."""
        status = job.status
        try:
            action(job)
        except StaleJob:
            return
        except ClusterError as error:
            logger.warning("rayft fine-tuning: %s: %s", job.id, error)
        except Exception as error:
            if status == "cancelled":  # it stays cancelled; the clean-up is tried again next pass
                logger.exception("rayft fine-tuning: cleaning up cancelled %s", job.id)
            elif isinstance(error, JobFailed):
                self.fail(job, status, error.error)
            else:
                logger.exception("rayft fine-tuning: %s failed in %s", job.id, job.stage)
                self.fail(job, status, JobError(code="internal_error", message=f"{type(error).__name__}: {error}"))

    def save(self, job: Job, was: str) -> None:
        self.store.save_job(job, expected_status=was)

    def event(self, job: Job, message: str, **options) -> None:
        self.store.add_event(job.id, message, **options)

    def fail(self, job: Job, was: str, error: JobError) -> None:
        job.status, job.error, job.finished_at = "failed", error, now()
        with contextlib.suppress(StaleJob):
            self.save(job, was)
            self.event(job, f"Job failed in {job.stage}: {error.message}", level="error")

    # --- stages --------------------------------------------------------------------------------
    def validate(self, job: Job) -> None:
        """Every record checked and counted; too many unusable ones fail the job (the rejects kept
        as a result file), else the job is queued with its estimate."""
        files = [self.store.file(job.training_file)] + (
            [self.store.file(job.validation_file)] if job.validation_file else []
        )
        if any(f is None or not Path(f.path).is_file() for f in files):
            raise JobFailed("file_not_found", "training_file: the file was deleted before the job ran", "training_file")
        config = pipeline.job_config(self.server, job, [f.path for f in files], self.paths)
        try:
            check = check_files([f.path for f in files], config.data, self.base_path, config.model.chat_template)
        except (ValueError, OSError) as error:  # a table file that cannot be read
            raise JobFailed(
                "invalid_training_file", f"training_file: cannot be read: {error}", "training_file"
            ) from None
        if check.rejects and (not check.kept or len(check.rejects) > self.config.max_rejected_fraction * check.records):
            rejects = self.paths.job_folder(job) / "rejects.jsonl"
            rejects.parent.mkdir(parents=True, exist_ok=True)
            rejects.write_text("".join(json.dumps(r.public()) + "\n" for r in check.rejects))
            job.result_files.append(self.files.keep_result(job.owner, rejects, "rejects.jsonl").id)
            raise JobFailed("invalid_training_file", f"training_file: {check.rejects_summary()}", "training_file")
        try:
            job.estimate = estimate(config.train, config.data.split, check.kept, check.tokens)
        except PlanError as error:
            raise JobFailed("invalid_training_file", f"training_file: {error}", "training_file") from None
        pipeline.write_config(config, self.paths.config(job))
        job.status, job.stage, job.estimated_finish = "queued", None, now() + round(job.estimate.seconds)
        self.save(job, "validating_files")
        usable = f"{check.kept} of {check.records} records usable" if check.rejects else f"{check.records} records"
        self.event(job, f"Files validated ({usable}): {job.estimate.summary()}", data=job.estimate.model_dump())
        self.event(job, "Job queued")

    def start(self, job: Job) -> None:
        job.status, job.started_at = "running", now()
        job.estimated_finish = now() + round(job.estimate.seconds) if job.estimate else None
        self.submit(job, "data", "queued")
        self.event(job, "Job started")

    def submit(self, job: Job, stage: str, was: str, extra: list[str] | None = None) -> None:
        upload = self.paths.job_folder(job) / "upload"  # nothing but the config travels with the job
        upload.mkdir(parents=True, exist_ok=True)
        submission = submit_stage(
            stage,
            str(self.paths.config(job)),
            address=self.cluster().address,
            working_dir=str(upload),
            env={"RAYFT_HOME": self.paths.home},
            extra=extra,
        )
        job.stage, job.ray_job = stage, submission.job_id
        self.save(job, was)
        self.event(job, f"Stage {stage} running as Ray job {submission.job_id}")

    def advance(self, job: Job) -> None:
        status = str(self.cluster().call("get_job_status", job.ray_job))
        if job.stage == "train":
            self.record_steps(job, pipeline.live_steps(job, self.paths))
        if status not in FINISHED_RAY:
            return
        if status != "SUCCEEDED":
            logs = self.cluster().call("get_job_logs", job.ray_job)
            raise JobFailed("stage_failed", f"{job.stage} {status.lower()}: {last_error(logs)}")
        {"data": self.after_data, "train": self.after_train, "eval": self.after_eval}[job.stage](job)

    def after_data(self, job: Job) -> None:
        manifest = pipeline.manifest_of(job, self.paths)
        counts = manifest.counts
        rejected = ", ".join(f"{n} {reason}" for reason, n in manifest.rejects_by_reason.items()) or "none"
        self.event(
            job,
            f"Data prepared: {counts.input} records in, {counts.kept} kept (train {counts.train}, validation "
            f"{counts.val}, test {counts.test}); removed: {rejected}",
            data={"counts": counts.model_dump(), "rejects_by_reason": manifest.rejects_by_reason},
        )
        rejects = pipeline.rejects_file(job, self.paths)
        if rejects:
            job.result_files.append(self.files.keep_result(job.owner, rejects, "rejects.jsonl").id)
        self.submit(job, "train", "running")

    def after_train(self, job: Job) -> None:
        version = self.registered(job)
        if version is None:
            raise JobFailed("stage_failed", "train succeeded but registered no version")
        steps = pipeline.read_steps(storage.read_text(storage.join(version.metrics["run_dir"], pipeline.STEP_LOG)))
        self.record_steps(job, steps)
        if job.estimate and steps:
            job.trained_tokens = round(job.estimate.trained_tokens * steps[-1]["step"] / job.estimate.steps)
        self.event(job, f"Trained and registered {version.ref}", data={"version": version.ref})
        self.submit(job, "eval", "running", extra=["--model", version.ref])

    def after_eval(self, job: Job) -> None:
        version = self.registered(job)
        report = stored_report(version)
        metric = report.primary_metric
        self.event(
            job,
            f"Evaluated on {report.n} test records: {metric} base {report.primary('base')} → "
            f"{version.ref} {report.primary('candidate')}",
            data={"metrics": report.metrics, "primary_metric": metric},
        )
        passed = all(c.passed for c in report.verdict)
        failed = "; ".join(c.detail for c in report.verdict if not c.passed)
        self.event(
            job,
            "Gate passed" if passed else f"Gate failed: {failed}",
            level="info" if passed else "warn",
            data={"checks": [c.model_dump() for c in report.verdict]},
        )
        alias = (job.metadata or {}).get(PROMOTE_KEY)
        if alias:
            try:
                promote(self.registry, version.ref, alias, actor=f"fine-tuning job {job.id}")
                self.event(job, f"Promoted {version.ref} to {version.name}:{alias}")
            except PromotionRefused as refused:
                self.event(job, f"Not promoted to {version.name}:{alias}: {refused}", level="warn")
        steps = self.store.metric_events(job.id)
        metrics_file = self.paths.job_folder(job) / "step_metrics.csv"
        metrics_file.write_text(pipeline.steps_csv([e.data for e in steps]))
        job.result_files.append(self.files.keep_result(job.owner, metrics_file, "step_metrics.csv").id)
        job.status, job.stage, job.ray_job = "succeeded", None, None
        job.fine_tuned_model, job.finished_at = version.ref, now()
        self.save(job, "running")
        self.event(job, f"Job succeeded: fine_tuned_model {version.ref}")

    def finish_cancel(self, job: Job) -> None:
        """Stop the cancelled job's Ray job; once it has ended, delete what it registered."""
        if job.ray_job:
            status = str(self.cluster().call("get_job_status", job.ray_job))
            if status not in FINISHED_RAY:
                self.cluster().call("stop_job", job.ray_job)
                return
        version = self.registered(job)
        if version is not None:
            with contextlib.suppress(RegistryError):  # an alias moved to it meanwhile: it stays
                self.registry.delete(version.ref)
                self.event(job, f"Deleted {version.ref}, registered before the cancel took effect")
        job.stage, job.ray_job = None, None
        self.save(job, "cancelled")

    # --- helpers -------------------------------------------------------------------------------
    def registered(self, job: Job) -> ModelVersion | None:
        """The version this job's train stage registered (its dataset is the job's own)."""
        dataset = str(self.paths.dataset(job))
        versions = [v for v in self.registry.list(job.name) if (v.config.get("data") or {}).get("out") == dataset]
        return versions[-1] if versions else None

    def record_steps(self, job: Job, steps: list[dict]) -> None:
        """Events for the steps not yet recorded."""
        seen = {e.data["step"] for e in self.store.metric_events(job.id)}
        total = job.estimate.steps if job.estimate else None
        for record in steps:
            if record["step"] not in seen:
                message, data = pipeline.step_event(record, total)
                self.event(job, message, kind="metrics", data=data)


def last_error(logs: str) -> str:
    """The line of a stage's output that says what went wrong: its `error:` line, else its last."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error:" in line]
    return ((errors or lines or ["no output"])[-1])[:500]
