"""The job machine: every fine-tuning job moves through `TRANSITIONS`, one `step` at a time, from
the rows in the registry's database, so a restarted server picks up where the last one stopped (a
stage's Ray job that kept running is watched again, not started again).

    validating_files ─▶ queued ─▶ running: data ─▶ train ─▶ eval ─▶ gate ─▶ succeeded
    queued | running ──pause──▶ paused ──resume──▶ queued (its stage runs again when its turn comes)
    any state not ended ──cancel──▶ cancelled;   a stage that fails, or cannot run ──▶ failed

`step(job) -> Job` does one thing for one job: validate it, start it, look at its stage's Ray job
(step metrics while training; the next stage when it succeeded; the job failed with the stage's
last error line when it failed), stop the Ray job of a paused job's stage, run that stage again
once the job is resumed (training with `--resume`: from its last checkpoint), or clean up after a
cancel. The routes ask for cancel, pause and resume (`ASKED`); the machine does the rest. A stage
whose work waits for resources while nothing of it runs is reported in the job's events after
`stage_wait_s`, and fails the job after `unschedulable_timeout_s`. A stage whose Ray job the
cluster no longer knows (its head was replaced) fails the job, or runs again where
`on_lost_stage: resubmit` says so.

What the machine does on the cluster and with the stages' outputs comes from two ports, `cluster`
(`ray_stages.RayStages`) and `work` (`stages.StageWork`), so it is tested without Ray or Serve.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Protocol

from rayft.cluster.client import ClusterError, JobGone
from rayft.config import FineTuningConfig
from rayft.projects import ProjectDirectory
from rayft.service.files import FileStore
from rayft.service.objects import Job, JobError, JobStatus, Stage, now
from rayft.service.store import ServiceStore, StaleJob

logger = logging.getLogger("ray.serve")
Q, R, P = JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.PAUSED
TRANSITIONS: dict[JobStatus, set[JobStatus]] = {  # the moves a step makes
    JobStatus.VALIDATING: {Q, JobStatus.FAILED},
    Q: {Q, R, JobStatus.FAILED},  # Q → Q: a resumed job waits for the stage stopped for its pause to end
    R: {R, JobStatus.SUCCEEDED, JobStatus.FAILED},
    P: {P, JobStatus.FAILED},  # P → P: its stage's Ray job stopped
    JobStatus.CANCELLED: {JobStatus.CANCELLED},  # the clean-up after a cancel
    JobStatus.SUCCEEDED: set(),
    JobStatus.FAILED: set(),
}


@dataclass(frozen=True)
class Asked:
    """A move a route asks for: the states it is allowed from, and the state it makes."""

    allowed: frozenset[JobStatus]
    to: JobStatus


ASKED = {  # the moves the routes make; the machine acts on them at its next pass
    "cancel": Asked(frozenset(s for s in JobStatus if not s.finished), JobStatus.CANCELLED),
    "pause": Asked(frozenset({Q, R}), P),
    "resume": Asked(frozenset({P}), Q),  # back in the queue, in its place: running limits hold
}
NEXT_STAGE = {Stage.DATA: Stage.TRAIN, Stage.TRAIN: Stage.EVAL, Stage.EVAL: Stage.GATE}
RAY_DONE = ("SUCCEEDED", "FAILED", "STOPPED")
MAX_RESUBMITS = 3
WAIT_CHECK_S = 2.0  # how often a running stage's work is looked at for waiting


class JobFailed(Exception):
    def __init__(self, code: str, message: str, param: str | None = None):
        super().__init__(message)
        self.error = JobError(code=code, message=message, param=param)


class StageCluster(Protocol):
    """Stages as Ray jobs: run, look at, stop, and what their work waits for."""

    address: str

    def submit(self, job: Job, stage: Stage, args: list[str]) -> str: ...
    def status(self, ray_job: str) -> str: ...  # raises JobGone for a job the cluster does not know
    def last_error(self, ray_job: str) -> str: ...
    def stop(self, ray_job: str) -> None: ...
    def stuck(self, ray_job: str) -> str | None: ...  # what it needs and what is free, when stuck


class StageWork(Protocol):
    """What each stage leaves behind, read and recorded; `Say` collects the job's events."""

    def validate(self, job: Job, say: Say) -> None: ...
    def resume_args(self, job: Job) -> list[str]: ...  # ["--resume"] once its training run has begun
    def live_steps(self, job: Job, say: Say) -> None: ...
    def after(self, stage: Stage, job: Job, say: Say) -> list[str]: ...  # the next stage's arguments
    def gate(self, job: Job, say: Say) -> None: ...
    def clean_up(self, job: Job, say: Say) -> None: ...


@dataclass
class Say:
    """Events a step wants written; written only once its change of the job is saved."""

    events: list[tuple[str, dict]] = field(default_factory=list)

    def __call__(self, message: str, **options) -> None:
        self.events.append((message, options))


class JobMachine:
    def __init__(
        self,
        config: FineTuningConfig,
        store: ServiceStore,
        files: FileStore,
        projects: ProjectDirectory,
        cluster: StageCluster,
        work: StageWork,
        clock=time.time,
    ):
        self.config, self.store, self.files, self.projects = config, store, files, projects
        self.cluster, self.work, self.clock = cluster, work, clock
        self.looked_at: dict[str, float] = {}  # job id → when its waiting work was last checked

    # --- a pass over every job -----------------------------------------------------------------
    def tick(self) -> None:
        self.files.sweep()
        for job in self.store.jobs_in(JobStatus.CANCELLED):
            if job.stage is not None:
                self.step(job)
        for job in self.store.jobs_in(P):
            if job.ray_job and not job.stage_stopped:
                self.step(job)
        for job in self.store.jobs_in(JobStatus.VALIDATING, R):
            self.step(job)
        running = self.store.jobs_in(R)
        for job in self.store.jobs_in(Q):
            if len(running) >= self.config.max_running_jobs:
                break
            mine = sum(j.project == job.project for j in running)
            if mine >= self.projects.limits(job.project).max_running_jobs:
                continue
            started = self.step(job)
            if started.status == R:
                running.append(started)

    # --- one step of one job -------------------------------------------------------------------
    def step(self, job: Job) -> Job:
        """Do the next thing for `job`; returns it as saved (unchanged when a cancel came in
        meanwhile, or the cluster did not answer)."""
        before, say, moved = job.status, Say(), job.model_copy(deep=True)
        try:
            {
                JobStatus.VALIDATING: self.validate,
                Q: self.start,
                R: self.advance,
                P: self.hold,
                JobStatus.CANCELLED: self.clean_up,
            }[before](moved, say)
        except JobGone as gone:
            self.lost(moved, say, str(gone))
        except ClusterError as error:  # unreachable for now: look again next pass
            logger.warning("rayft fine-tuning: %s: %s", job.id, error)
            return job
        except JobFailed as failed:
            self.fail(moved, say, failed.error)
        except Exception as error:  # a bug of ours fails the job, never the runner
            if before == JobStatus.CANCELLED:  # it stays cancelled; the clean-up is tried again
                logger.exception("rayft fine-tuning: cleaning up cancelled %s", job.id)
                return job
            logger.exception("rayft fine-tuning: %s failed in %s", job.id, job.stage)
            self.fail(moved, say, JobError(code="internal_error", message=f"{type(error).__name__}: {error}"))
        if moved.status not in TRANSITIONS[before]:
            raise AssertionError(f"{job.id}: {before.value} → {moved.status.value} is not a transition")
        try:
            self.store.save_job(moved, expected_status=before)
        except StaleJob:  # cancelled or paused meanwhile: the route's move wins, the next pass acts on it
            if moved.ray_job and moved.ray_job != job.ray_job:  # a stage this step started: stop it
                with contextlib.suppress(ClusterError):
                    self.cluster.stop(moved.ray_job)
            return self.store.job(job.id) or job
        for message, options in say.events:
            self.store.add_event(job.id, message, **options)
        return moved

    def fail(self, job: Job, say: Say, error: JobError) -> None:
        stage = job.stage.value if job.stage else "none"
        if job.ray_job and job.stage and job.stage.on_cluster:
            try:  # leave nothing running for a failed job
                if self.cluster.status(job.ray_job) not in RAY_DONE:
                    self.cluster.stop(job.ray_job)
            except ClusterError:
                pass
        job.status, job.error, job.finished_at = JobStatus.FAILED, error, now()
        say(f"Job failed in {stage}: {error.message}", level="error")

    # --- transitions -----------------------------------------------------------------------------
    def validate(self, job: Job, say: Say) -> None:
        self.work.validate(job, say)
        job.status, job.stage = Q, None
        say("Job queued")

    def start(self, job: Job, say: Say) -> None:
        if job.stage is not None:  # it ran before it was paused
            self.resume(job, say)
            return
        job.status, job.started_at = R, now()
        job.estimated_finish = now() + round(job.estimate.seconds) if job.estimate else None
        say("Job started")
        self.submit(job, Stage.DATA, [], say)

    def hold(self, job: Job, say: Say) -> None:
        """A paused job: stop its stage's Ray job, unless it ended before the pause took effect
        (then the job goes on from its end when resumed)."""
        if job.ray_job is None or job.stage_stopped or self.cluster.status(job.ray_job) in RAY_DONE:
            return
        self.cluster.stop(job.ray_job)
        job.stage_stopped = True
        say(f"Stage {job.stage.value} stopped for the pause (Ray job {job.ray_job})")

    def resume(self, job: Job, say: Say) -> None:
        """A resumed job's turn in the queue: its stage runs again where the pause stopped it, once
        that Ray job has ended; a stage the pause did not stop is watched on."""
        if job.stage_stopped and job.ray_job and not self.ended(job.ray_job):
            return  # still stopping: it waits in the queue
        job.status = R
        say(f"Job resumed in stage {job.stage.value}")
        if job.stage_stopped:
            job.stage_stopped = False
            self.rerun(job, say)

    def rerun(self, job: Job, say: Say) -> None:
        """Submit the job's stage again with the arguments it had; training continues its run from
        the last checkpoint when the run has begun (`rayft train --resume`)."""
        args = [a for a in job.stage_args if a != "--resume"]
        self.submit(job, job.stage, args + (self.work.resume_args(job) if job.stage == Stage.TRAIN else []), say)

    def ended(self, ray_job: str) -> bool:
        try:
            return self.cluster.status(ray_job) in RAY_DONE
        except JobGone:
            return True

    def submit(self, job: Job, stage: Stage, args: list[str], say: Say) -> None:
        job.ray_job = self.cluster.submit(job, stage, args)
        job.stage, job.stage_args, job.waiting_since, job.waiting_reported = stage, args, None, False
        say(f"Stage {stage.value} running as Ray job {job.ray_job}")

    def advance(self, job: Job, say: Say) -> None:
        if job.stage == Stage.GATE:
            self.work.gate(job, say)
            job.status, job.stage, job.ray_job, job.finished_at = JobStatus.SUCCEEDED, None, None, now()
            say(f"Job succeeded: fine_tuned_model {job.fine_tuned_model}")
            return
        status = self.cluster.status(job.ray_job)
        if job.stage == Stage.TRAIN:
            self.work.live_steps(job, say)
        if status not in RAY_DONE:
            self.watch_resources(job, say)
            return
        if status != "SUCCEEDED":
            message = f"{job.stage.value} {status.lower()}: {self.cluster.last_error(job.ray_job)}"
            raise JobFailed("stage_failed", message)
        args = self.work.after(job.stage, job, say)
        following = NEXT_STAGE[job.stage]
        if following.on_cluster:
            self.submit(job, following, args, say)
        else:
            job.stage, job.ray_job = following, None

    def watch_resources(self, job: Job, say: Say) -> None:
        """Report a stage whose work waits while nothing of it runs; fail it after the timeout."""
        moment = self.clock()
        if moment - self.looked_at.get(job.id, -WAIT_CHECK_S) < WAIT_CHECK_S:
            return
        self.looked_at[job.id] = moment
        stuck = self.cluster.stuck(job.ray_job)
        stage = job.stage.value
        if stuck is None:
            if job.waiting_reported:
                say(f"Stage {stage} got the resources it waited for after {moment - job.waiting_since:.0f} s")
            job.waiting_since, job.waiting_reported = None, False
            return
        job.waiting_since = job.waiting_since or moment
        waited = moment - job.waiting_since
        if waited >= self.config.stage_wait_s and not job.waiting_reported:
            job.waiting_reported = True
            say(
                f"Stage {stage} is waiting for resources: {stuck} (fails after "
                f"{self.config.unschedulable_timeout_s:g} s: serve.fine_tuning.unschedulable_timeout_s)",
                level="warn",
            )
        if waited >= self.config.unschedulable_timeout_s:
            raise JobFailed("stage_unschedulable", f"{stage} could not be scheduled in {waited:.0f} s: {stuck}")

    def lost(self, job: Job, say: Say, why: str) -> None:
        """The stage's Ray job is gone from the cluster: run the stage again, or fail the job."""
        if job.status == JobStatus.CANCELLED:  # nothing left to stop
            job.ray_job = None
            self.clean_up(job, say)
            return
        if job.status == P:  # nothing left to stop: the stage runs again on resume
            job.ray_job, job.stage_stopped = None, True
            return
        message = (
            f"stage {job.stage.value}'s Ray job {job.ray_job} no longer exists on the cluster at "
            f"{self.cluster.address} (was its head replaced?)"
        )
        if self.config.on_lost_stage == "resubmit" and job.resubmits < MAX_RESUBMITS:
            job.resubmits += 1
            say(f"{message[0].upper()}{message[1:]}; running it again", level="warn")
            self.rerun(job, say)
            return
        self.fail(job, say, JobError(code="stage_lost", message=message))

    def clean_up(self, job: Job, say: Say) -> None:
        """After a cancel: stop the Ray job; once it has ended, delete what it registered."""
        if job.ray_job and self.cluster.status(job.ray_job) not in RAY_DONE:
            self.cluster.stop(job.ray_job)
            return
        self.work.clean_up(job, say)
        job.stage, job.ray_job = None, None
