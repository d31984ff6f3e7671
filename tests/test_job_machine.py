"""The job machine without Ray or Serve: a fake cluster (what Ray jobs say) and fake stage work (what
stages leave behind) around the real store, so every transition of the table is driven and checked:
the happy path stage by stage, a failed stage, a cancel mid-stage, a stage whose Ray job vanished
(failed, or run again), a stage stuck waiting for resources (reported, then failed), and the queue
honouring the cluster's and each project's running limits."""

import pytest

from rayft.cluster.client import ClusterError, JobGone
from rayft.config import FineTuningConfig
from rayft.projects import ProjectDirectory
from rayft.service.files import FileStore
from rayft.service.machine import TRANSITIONS, JobFailed, JobMachine
from rayft.service.objects import Job, JobStatus, Stage, now
from rayft.service.store import ServiceStore


class FakeCluster:
    address = "http://head:8265"

    def __init__(self):
        self.submitted: list[tuple[str, Stage, list[str]]] = []
        self.states: dict[str, str] = {}
        self.stopped: list[str] = []
        self.gone: set[str] = set()
        self.stuck_says: str | None = None
        self.down = False

    def submit(self, job, stage, args):
        if self.down:
            raise ClusterError("head does not answer")
        ray_job = f"ray-{job.id}-{stage.value}-{len(self.submitted)}"
        self.submitted.append((job.id, stage, args))
        self.states[ray_job] = "RUNNING"
        return ray_job

    def status(self, ray_job):
        if ray_job in self.gone:
            raise JobGone(f"Job {ray_job} does not exist")
        return self.states[ray_job]

    def last_error(self, ray_job):
        return "error: out of memory"

    def stop(self, ray_job):
        self.stopped.append(ray_job)
        self.states[ray_job] = "STOPPED"

    def stuck(self, ray_job):
        return self.stuck_says


class FakeWork:
    def __init__(self):
        self.cleaned: list[str] = []
        self.invalid = False

    def validate(self, job, say):
        if self.invalid:
            raise JobFailed("invalid_training_file", "training_file: line 2: invalid_json", "training_file")
        say("Files validated")

    def live_steps(self, job, say):
        pass

    def after(self, stage, job, say):
        say(f"{stage.value} done")
        return ["--model", f"{job.name}:1"] if stage == Stage.TRAIN else []

    def gate(self, job, say):
        job.fine_tuned_model = f"{job.name}:1"

    def clean_up(self, job, say):
        self.cleaned.append(job.id)


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


@pytest.fixture
def rig(tmp_path):
    config = FineTuningConfig(
        enabled=True,
        max_running_jobs=2,
        stage_wait_s=5,
        unschedulable_timeout_s=60,
        project_limits={"max_running_jobs": 1},
    )
    store = ServiceStore(tmp_path / "r.db")
    projects = ProjectDirectory.of({}, config)
    files = FileStore(config, store, str(tmp_path / "f"), projects)
    cluster, work, clock = FakeCluster(), FakeWork(), Clock()
    machine = JobMachine(config, store, files, projects, cluster, work, clock=clock)
    return machine, store, cluster, work, clock


def new_job(store: ServiceStore, project: str = "support", n: int = 0) -> Job:
    job = Job(
        id=f"ftjob-{project}-{n}",
        project=project,
        created_at=now(),
        model="tiny",
        training_file="f",
        name=f"ft-{project}-x",
    )
    store.add_job(job)
    return job


def events(store: ServiceStore, job: Job) -> list[str]:
    return [e.message for e in reversed(store.events(job.id, None, 100)[0])]


def finish(cluster: FakeCluster, job: Job, state: str = "SUCCEEDED") -> None:
    cluster.states[job.ray_job] = state


def test_a_job_moves_through_every_stage_to_succeeded(rig):
    machine, store, cluster, _, _ = rig
    job = new_job(store)
    job = machine.step(job)
    assert (job.status, job.stage) == (JobStatus.QUEUED, None)
    job = machine.step(job)
    assert (job.status, job.stage) == (JobStatus.RUNNING, Stage.DATA) and job.ray_job
    assert machine.step(job).stage == Stage.DATA  # still running: nothing changes
    for following in (Stage.TRAIN, Stage.EVAL):
        finish(cluster, job)
        job = machine.step(job)
        assert job.stage == following and job.status == JobStatus.RUNNING
    assert cluster.submitted[-1] == (job.id, Stage.EVAL, ["--model", "ft-support-x:1"])
    finish(cluster, job)
    job = machine.step(job)
    assert (job.stage, job.ray_job) == (Stage.GATE, None)
    job = machine.step(job)
    assert job.status == JobStatus.SUCCEEDED and job.fine_tuned_model == "ft-support-x:1" and job.finished_at
    said = events(store, job)
    assert said[0] == "Files validated" and said[-1] == "Job succeeded: fine_tuned_model ft-support-x:1"
    assert [m for m in said if m.startswith("Stage ")] == [
        f"Stage {s} running as Ray job {r}"
        for s, r in zip(
            ("data", "train", "eval"), [f"ray-{job.id}-{s}-{i}" for i, s in enumerate(("data", "train", "eval"))]
        )
    ]
    assert store.job(job.id) == job  # every step's result is what is stored


def test_every_move_the_machine_makes_is_in_the_table(rig):
    machine, store, cluster, _, _ = rig
    seen = set()
    job = new_job(store)
    while not job.status.finished:
        before = job.status
        if job.ray_job:
            finish(cluster, job)
        job = machine.step(job)
        seen.add((before, job.status))
    assert all(after in TRANSITIONS[before] for before, after in seen)
    assert {(JobStatus.VALIDATING, JobStatus.QUEUED), (JobStatus.RUNNING, JobStatus.SUCCEEDED)} <= seen


def test_invalid_files_and_a_failed_stage_fail_the_job_with_the_reason(rig):
    machine, store, cluster, work, _ = rig
    work.invalid = True
    bad = machine.step(new_job(store, n=1))
    assert bad.status == JobStatus.FAILED and bad.error.code == "invalid_training_file"
    assert bad.error.param == "training_file" and "line 2" in bad.error.message
    work.invalid = False
    job = machine.step(machine.step(new_job(store, n=2)))
    finish(cluster, job, "FAILED")
    job = machine.step(job)
    assert job.status == JobStatus.FAILED and job.error.code == "stage_failed"
    assert job.error.message == "data failed: error: out of memory"
    assert events(store, job)[-1] == "Job failed in data: data failed: error: out of memory"


def test_an_unreachable_cluster_changes_nothing_and_is_tried_again(rig):
    machine, store, cluster, _, _ = rig
    job = machine.step(new_job(store))
    cluster.down = True
    assert machine.step(job) == job and store.job(job.id).status == JobStatus.QUEUED
    cluster.down = False
    assert machine.step(job).status == JobStatus.RUNNING


def test_a_stage_whose_ray_job_vanished_fails_the_job_and_the_queue_moves_on(rig):
    machine, store, cluster, _, _ = rig
    machine.projects.defaults = machine.projects.defaults.model_copy(update={"max_running_jobs": 2})
    machine.config.max_running_jobs = 1
    first, second = new_job(store, n=1), new_job(store, n=2)
    machine.tick()
    machine.tick()
    running = store.job(first.id)
    assert running.status == JobStatus.RUNNING and store.job(second.id).status == JobStatus.QUEUED
    cluster.gone.add(running.ray_job)  # the head was replaced: it knows no such job
    machine.tick()
    lost = store.job(first.id)
    assert lost.status == JobStatus.FAILED and lost.error.code == "stage_lost"
    assert running.ray_job in lost.error.message and "no longer exists" in lost.error.message
    assert store.job(second.id).status == JobStatus.RUNNING  # the queue moved on in the same pass


def test_a_lost_stage_runs_again_when_the_config_says_so(rig):
    machine, store, cluster, _, _ = rig
    machine.config.on_lost_stage = "resubmit"
    job = machine.step(machine.step(new_job(store)))
    finish(cluster, job)
    job = machine.step(job)
    assert job.stage == Stage.TRAIN
    cluster.gone.add(job.ray_job)
    again = machine.step(job)
    assert again.status == JobStatus.RUNNING and again.stage == Stage.TRAIN and again.ray_job != job.ray_job
    assert cluster.submitted[-1] == (job.id, Stage.TRAIN, ["--resume"]) and again.resubmits == 1
    assert "running it again" in events(store, again)[-2]


def test_a_stuck_stage_is_reported_after_the_wait_and_fails_after_the_timeout(rig):
    machine, store, cluster, _, clock = rig
    job = machine.step(machine.step(new_job(store)))
    cluster.stuck_says = "needs 1 × task ReadFiles (CPU 1 each); free now: CPU 0.75 of 2"
    job = machine.step(job)
    assert job.waiting_since == clock.t and not job.waiting_reported
    clock.t += 6
    job = machine.step(job)
    assert job.waiting_reported and job.status == JobStatus.RUNNING
    warning = store.events(job.id, None, 1)[0][0]
    assert warning.level == "warn" and warning.message.startswith("Stage data is waiting for resources: needs 1 ×")
    assert "free now: CPU 0.75 of 2" in warning.message and "unschedulable_timeout_s" in warning.message
    clock.t += 60
    job = machine.step(job)
    assert job.status == JobStatus.FAILED and job.error.code == "stage_unschedulable"
    assert "CPU 0.75 of 2" in job.error.message and cluster.stopped == [store.job(job.id).ray_job]


def test_a_stage_that_gets_its_resources_says_so_and_its_wait_starts_over(rig):
    machine, store, cluster, _, clock = rig
    job = machine.step(machine.step(new_job(store)))
    cluster.stuck_says = "needs something"
    job = machine.step(job)
    clock.t += 10
    job = machine.step(job)
    cluster.stuck_says = None
    clock.t += 3
    job = machine.step(job)
    assert job.waiting_since is None and not job.waiting_reported
    assert events(store, job)[-1] == "Stage data got the resources it waited for after 13 s"


def test_waiting_is_looked_at_every_few_seconds_not_every_pass(rig):
    machine, store, cluster, _, clock = rig
    job = machine.step(machine.step(new_job(store)))
    cluster.stuck_says = "needs something"
    job = machine.step(job)
    first = job.waiting_since
    cluster.stuck_says = None
    clock.t += 1
    assert machine.step(job).waiting_since == first  # not looked at again within 2 s


def test_a_cancel_stops_the_stage_then_cleans_up_what_it_registered(rig):
    machine, store, cluster, work, _ = rig
    from rayft.projects import Caller
    from rayft.service.jobs import FineTuningJobs

    job = machine.step(machine.step(new_job(store)))
    jobs = FineTuningJobs(machine.config, {"tiny"}, store, machine.files)
    jobs.cancel(Caller("support"), job.id)
    machine.tick()
    assert cluster.stopped == [job.ray_job] and store.job(job.id).stage == Stage.DATA  # waits for it to end
    machine.tick()
    cleaned = store.job(job.id)
    assert work.cleaned == [job.id] and cleaned.status == JobStatus.CANCELLED and cleaned.stage is None


def test_a_step_racing_a_cancel_leaves_the_cancel_and_stops_what_it_started(rig):
    machine, store, cluster, _, _ = rig
    queued = machine.step(new_job(store))
    cancelled = queued.model_copy(update={"status": JobStatus.CANCELLED})
    store.save_job(cancelled)  # the cancel lands after the machine read the job
    result = machine.step(queued)
    assert result.status == JobStatus.CANCELLED and cluster.stopped == [f"ray-{queued.id}-data-0"]


def test_the_queue_honours_the_clusters_and_each_projects_running_limits(rig):
    machine, store, _, _, _ = rig
    a1, a2, b1, c1 = new_job(store, "a", 1), new_job(store, "a", 2), new_job(store, "b", 1), new_job(store, "c", 1)
    machine.tick()  # validated
    machine.tick()  # started: a1 (a's one running job) and b1 (the cluster's second)
    status = {j.id: store.job(j.id).status for j in (a1, a2, b1, c1)}
    assert status == {
        a1.id: JobStatus.RUNNING,
        a2.id: JobStatus.QUEUED,  # a already runs one (its project limit)
        b1.id: JobStatus.RUNNING,
        c1.id: JobStatus.QUEUED,  # the cluster runs two (max_running_jobs)
    }
