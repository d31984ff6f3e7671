"""The job machine without Ray or Serve: a fake cluster (what Ray jobs say) and fake stage work (what
stages leave behind) around the real store, so every transition of the table is driven and checked:
the happy path stage by stage, a failed stage, a cancel mid-stage, a pause that stops the stage and
a resume that runs it again (training with `--resume`) once it has stopped, a stage whose Ray job
vanished (failed, or run again), a stage stuck waiting for resources (reported, then failed), and
the queue honouring the cluster's and each project's running limits."""

import pytest

from rayft.cluster.client import ClusterError, JobGone
from rayft.config import FineTuningConfig
from rayft.projects import Caller, ProjectDirectory
from rayft.service.files import FileStore
from rayft.service.jobs import FineTuningJobs
from rayft.service.machine import ASKED, TRANSITIONS, JobFailed, JobMachine
from rayft.service.objects import Job, JobStatus, ServiceError, Stage, now
from rayft.service.pipeline import ServicePaths
from rayft.service.store import ServiceStore

SUPPORT = Caller("support")


class FakeCluster:
    address = "http://head:8265"

    def __init__(self):
        self.submitted: list[tuple[str, Stage, list[str]]] = []
        self.states: dict[str, str] = {}
        self.stopped: list[str] = []
        self.gone: set[str] = set()
        self.stuck_says: str | None = None
        self.down = False
        self.slow_stop = False  # a stopped Ray job takes a while to end

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
        self.states[ray_job] = "RUNNING" if self.slow_stop else "STOPPED"

    def stuck(self, ray_job):
        return self.stuck_says


class FakeWork:
    def __init__(self):
        self.cleaned: list[str] = []
        self.invalid = False
        self.run_begun = True

    def resume_args(self, job):
        return ["--resume"] if self.run_begun else []

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


def routes(machine: JobMachine, tmp_path) -> FineTuningJobs:
    """What the cancel, pause and resume routes do, over the machine's store."""
    paths = ServicePaths(home=str(tmp_path), registry=str(tmp_path / "r.db"), files="", jobs="")
    return FineTuningJobs(machine.config, {"tiny"}, "/base", paths, machine.store, machine.files)


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


def test_a_cancel_stops_the_stage_then_cleans_up_what_it_registered(rig, tmp_path):
    machine, store, cluster, work, _ = rig
    job = machine.step(machine.step(new_job(store)))
    routes(machine, tmp_path).cancel(SUPPORT, job.id)
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


def train_stage(machine: JobMachine, cluster: FakeCluster, job: Job) -> Job:
    """The job started and its data stage done: it trains."""
    job = machine.step(machine.step(job))
    finish(cluster, job)
    return machine.step(job)


def test_a_pause_stops_the_training_stage_and_a_resume_trains_on_from_the_checkpoint_to_succeeded(rig, tmp_path):
    machine, store, cluster, _, _ = rig
    jobs = routes(machine, tmp_path)
    job = train_stage(machine, cluster, new_job(store))
    training = job.ray_job
    paused = jobs.pause(SUPPORT, job.id)
    assert paused.status == JobStatus.PAUSED and paused.stage == Stage.TRAIN
    machine.tick()
    held = store.job(job.id)
    assert cluster.stopped == [training] and held.stage_stopped and held.status == JobStatus.PAUSED
    machine.tick()
    assert cluster.stopped == [training]  # stopped once
    assert jobs.resume(SUPPORT, job.id).status == JobStatus.QUEUED
    machine.tick()
    resumed = store.job(job.id)
    assert resumed.status == JobStatus.RUNNING and resumed.stage == Stage.TRAIN and resumed.ray_job != training
    assert cluster.submitted[-1] == (job.id, Stage.TRAIN, ["--resume"]) and not resumed.stage_stopped
    finish(cluster, resumed)
    evaluating = machine.step(resumed)
    assert evaluating.stage == Stage.EVAL and cluster.submitted[-1][2] == ["--model", "ft-support-x:1"]
    finish(cluster, evaluating)
    done = machine.step(machine.step(evaluating))
    assert done.status == JobStatus.SUCCEEDED
    said = events(store, done)
    paused_at = said.index("Job paused while running (stage: train)")
    assert said[paused_at + 1] == f"Stage train stopped for the pause (Ray job {training})"
    assert said[paused_at + 2 : paused_at + 5] == [
        "Job resumed (stage: train); queued",
        "Job resumed in stage train",
        f"Stage train running as Ray job {resumed.ray_job}",
    ]


def test_a_resumed_job_waits_in_the_queue_until_its_stopped_stage_has_ended(rig, tmp_path):
    machine, store, cluster, _, _ = rig
    jobs = routes(machine, tmp_path)
    job = train_stage(machine, cluster, new_job(store))
    cluster.slow_stop = True
    jobs.pause(SUPPORT, job.id)
    machine.tick()
    jobs.resume(SUPPORT, job.id)
    machine.tick()
    machine.tick()
    assert store.job(job.id).status == JobStatus.QUEUED and len(cluster.submitted) == 2  # no second trainer
    finish(cluster, store.job(job.id), "STOPPED")
    machine.tick()
    assert store.job(job.id).status == JobStatus.RUNNING and cluster.submitted[-1][1:] == (Stage.TRAIN, ["--resume"])


def test_a_stage_the_pause_did_not_stop_goes_on_after_the_resume(rig, tmp_path):
    """Resumed before the runner acted (the stage still runs: watched on), or a stage that ended
    before the pause took effect (its result is used, nothing runs twice)."""
    machine, store, cluster, _, _ = rig
    jobs = routes(machine, tmp_path)
    job = train_stage(machine, cluster, new_job(store))
    jobs.pause(SUPPORT, job.id)
    jobs.resume(SUPPORT, job.id)
    machine.tick()
    watched = store.job(job.id)
    assert watched.status == JobStatus.RUNNING and watched.ray_job == job.ray_job and not cluster.stopped
    finish(cluster, watched)
    jobs.pause(SUPPORT, job.id)
    machine.tick()
    assert not cluster.stopped and not store.job(job.id).stage_stopped  # it had ended: nothing to stop
    jobs.resume(SUPPORT, job.id)
    machine.tick()  # started from the queue
    machine.tick()  # its ended stage looked at
    assert store.job(job.id).stage == Stage.EVAL and [s for _, s, _ in cluster.submitted].count(Stage.TRAIN) == 1


def test_a_training_stage_paused_before_its_run_began_starts_it_and_a_job_paused_in_the_queue_starts_at_data(
    rig, tmp_path
):
    machine, store, cluster, work, _ = rig
    jobs = routes(machine, tmp_path)
    work.run_begun = False  # stopped while it tokenized: no run to continue
    job = train_stage(machine, cluster, new_job(store, n=1))
    jobs.pause(SUPPORT, job.id)
    machine.tick()
    jobs.resume(SUPPORT, job.id)
    machine.tick()
    assert cluster.submitted[-1] == (job.id, Stage.TRAIN, [])
    waiting = machine.step(new_job(store, "other", n=2))
    jobs.pause(Caller("other"), waiting.id)
    jobs.resume(Caller("other"), waiting.id)
    machine.tick()
    assert store.job(waiting.id).stage == Stage.DATA and "Job started" in events(store, waiting)


def test_a_paused_job_frees_its_place_and_can_be_cancelled(rig, tmp_path):
    machine, store, cluster, work, _ = rig
    machine.config.max_running_jobs = 1
    machine.projects.defaults = machine.projects.defaults.model_copy(update={"max_running_jobs": 2})
    jobs = routes(machine, tmp_path)
    first, second = new_job(store, n=1), new_job(store, n=2)
    machine.tick()
    machine.tick()
    assert store.job(second.id).status == JobStatus.QUEUED
    jobs.pause(SUPPORT, first.id)
    machine.tick()
    assert store.job(second.id).status == JobStatus.RUNNING  # the paused job's place went to the next
    jobs.resume(SUPPORT, first.id)
    machine.tick()
    assert store.job(first.id).status == JobStatus.QUEUED  # back in the queue, behind the running limit
    jobs.pause(SUPPORT, first.id)
    jobs.cancel(SUPPORT, first.id)
    machine.tick()
    assert store.job(first.id).status == JobStatus.CANCELLED and work.cleaned == [first.id]


def test_a_paused_jobs_vanished_stage_runs_again_on_resume(rig, tmp_path):
    machine, store, cluster, _, _ = rig
    jobs = routes(machine, tmp_path)
    job = train_stage(machine, cluster, new_job(store))
    cluster.gone.add(job.ray_job)  # the head was replaced while the job was paused
    jobs.pause(SUPPORT, job.id)
    machine.tick()
    held = store.job(job.id)
    assert held.status == JobStatus.PAUSED and held.stage_stopped and held.ray_job is None
    jobs.resume(SUPPORT, job.id)
    machine.tick()
    assert store.job(job.id).status == JobStatus.RUNNING and cluster.submitted[-1] == (
        job.id,
        Stage.TRAIN,
        ["--resume"],
    )


@pytest.mark.parametrize(
    "action, status",
    [
        ("pause", JobStatus.VALIDATING),
        ("pause", JobStatus.PAUSED),
        ("pause", JobStatus.SUCCEEDED),
        ("resume", JobStatus.RUNNING),
        ("resume", JobStatus.QUEUED),
        ("resume", JobStatus.CANCELLED),
    ],
)
def test_pause_and_resume_from_another_state_are_400s_naming_the_state(rig, tmp_path, action, status):
    machine, store, _, _, _ = rig
    job = new_job(store)
    store.save_job(job.model_copy(update={"status": status}))
    with pytest.raises(ServiceError) as refused:
        getattr(routes(machine, tmp_path), action)(SUPPORT, job.id)
    assert refused.value.status == 400 and refused.value.param == "fine_tuning_job_id"
    assert f"is {status.value};" in refused.value.message and store.job(job.id).status == status


def test_every_move_of_a_pause_and_resume_is_in_the_tables(rig, tmp_path):
    machine, store, cluster, _, _ = rig
    jobs = routes(machine, tmp_path)
    cluster.slow_stop = True
    job = train_stage(machine, cluster, new_job(store))
    seen, asked = set(), set()
    for action in ("pause", "resume"):
        before = store.job(job.id).status
        asked.add((action, before, getattr(jobs, action)(SUPPORT, job.id).status))
        for _ in range(2):
            before = store.job(job.id).status
            seen.add((before, machine.step(store.job(job.id)).status))
    finish(cluster, store.job(job.id), "STOPPED")
    before = store.job(job.id).status
    seen.add((before, machine.step(store.job(job.id)).status))
    assert all(after in TRANSITIONS[before] for before, after in seen)
    assert {(JobStatus.PAUSED, JobStatus.PAUSED), (JobStatus.QUEUED, JobStatus.QUEUED)} <= seen
    assert (JobStatus.QUEUED, JobStatus.RUNNING) in seen
    assert all(before in ASKED[a].allowed and after == ASKED[a].to for a, before, after in asked)


def test_a_step_racing_a_pause_leaves_the_pause_and_the_resume_starts_afresh(rig, tmp_path):
    machine, store, cluster, _, _ = rig
    queued = machine.step(new_job(store))
    routes(machine, tmp_path).pause(SUPPORT, queued.id)  # lands after the machine read the job
    raced = machine.step(queued)
    assert raced.status == JobStatus.PAUSED and cluster.stopped == [f"ray-{queued.id}-data-0"]
    routes(machine, tmp_path).resume(SUPPORT, queued.id)
    machine.tick()
    started = store.job(queued.id)
    assert started.status == JobStatus.RUNNING and started.stage == Stage.DATA and started.ray_job.endswith("-1")
