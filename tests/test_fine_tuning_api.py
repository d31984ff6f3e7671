"""The OpenAI fine-tuning API end to end, with the official `openai` client only, against a real
`rayft serve` process on a real `ray start` head whose Jobs API runs each job's stages: upload,
create, watch events, list checkpoints, chat with `fine_tuned_model`; the server restarted mid-job
(the job completes and stays visible); a cancel mid-training (cancelled, nothing registered); a bad
file (failed at validation, lines named, rejects downloadable); refusals as OpenAI errors."""

import json
import time

import openai
import pytest
from ray_head import running_head
from serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(900)]

OWN_RAY_HEAD = True  # the server runs on its own `ray start` head (its Jobs API runs the stages)
ALICE, BOB, ADMIN = "alice-key", "bob-key", "admin-key"


def server_config(tiny_model: str, port: int) -> dict:
    """Stages kept small: a few training steps, a short eval without few-shot or forgetting."""
    return {
        "name": "ftsvc",
        "model": {"base": tiny_model},
        "data": {"label_regex": r"Category:\s*(\w+)", "max_tokens": 256, "warn_min_records": 0},
        "train": {"max_steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 6, "max_seq_len": 256},
        "eval": {"limit": 20, "few_shot": 0, "forgetting": False, "perplexity": False, "max_new_tokens": 8},
        "serve": {
            "port": port,
            "max_model_len": 1024,
            "fine_tuning": {"enabled": True, "poll_s": 0.5, "max_rejected_fraction": 0.05},
        },
    }


class Service:
    """The head, the server on it and a client per key; `restart()` stops the server with SIGTERM and
    starts a new one on the same head, home and port."""

    def __init__(self, head, tiny_model: str, folder):
        self.config = server_config(tiny_model, free_port())
        self.folder, self.home = folder, folder / "home"
        self.env = {
            "RAY_ADDRESS": f"127.0.0.1:{head.ports['--port']}",
            "RAYFT_HOME": str(self.home),
            "RAYFT_API_KEYS": f"{ALICE},{BOB}",
            "RAYFT_ADMIN_KEYS": ADMIN,
        }
        self.head, self.process = head, self.start()

    def start(self) -> ServeProcess:
        return ServeProcess(self.config, self.folder, self.env)

    def restart(self) -> None:
        assert self.process.stop() == 0
        self.process = self.start()

    def client(self, key: str = ALICE) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.process.url + "/v1", api_key=key, max_retries=0, timeout=60)

    def registry(self):
        from rayft.registry import Registry

        return Registry(self.home / "registry.db")


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory):
    with running_head(num_cpus=8) as head:
        running = Service(head, tiny_model, tmp_path_factory.mktemp("ft"))
        try:
            yield running
        finally:
            running.process.kill()


def tickets(path, n: int, seed: int):
    from rayft.data.samples import write_support_tickets

    return write_support_tickets(path, n=n, seed=seed)


def wait_for(client: openai.OpenAI, job_id: str, done, timeout_s: float = 420, ended=("failed", "cancelled")):
    """The job once `done(job)`; an AssertionError if it ends (a status in `ended`) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        if job.status in ended:
            raise AssertionError(f"{job_id} {job.status}: {job.error}")
        time.sleep(1)
    raise AssertionError(f"{job_id} still {job.status} ({job.model_extra.get('x_rayft')}) after {timeout_s} s")


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data)]


def test_upload_train_evaluate_and_chat_with_the_result_across_a_server_restart(service, tmp_path):
    alice = service.client()
    with open(tickets(tmp_path / "tickets.jsonl", 300, seed=11), "rb") as data:
        uploaded = alice.files.create(file=data, purpose="fine-tune")
    assert uploaded.purpose == "fine-tune" and uploaded.filename == "tickets.jsonl" and uploaded.bytes > 0

    job = alice.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 1},
        suffix="support",
        seed=3,
        metadata={"promote_to": "prod"},
    )
    assert job.status == "validating_files" and job.model == "tiny"
    queued = wait_for(alice, job.id, lambda j: j.status != "validating_files")
    estimate = queued.model_extra["x_rayft"]["estimate"]
    assert queued.estimated_finish and estimate["steps"] == 6 and estimate["tokens"] > 0

    wait_for(alice, job.id, lambda j: j.model_extra["x_rayft"]["stage"] == "train")
    service.restart()  # mid-training: the Ray job keeps running on the head; the new server watches it
    alice = service.client()
    done = wait_for(alice, job.id, lambda j: j.status == "succeeded")

    assert done.fine_tuned_model == "ft-support:1" and done.trained_tokens > 0 and done.finished_at
    assert job.id in [j.id for j in alice.fine_tuning.jobs.list(limit=10).data]
    said = messages(alice, job.id)
    assert (
        said[0] == "Job created; validating tickets.jsonl"
        and said[-1] == "Job succeeded: fine_tuned_model ft-support:1"
    )
    for stage in ("data", "train", "eval"):  # each stage ran once: the restart re-attached, not restarted
        assert sum(m.startswith(f"Stage {stage} running as Ray job") for m in said) == 1
    prepared = next(m for m in said if m.startswith("Data prepared"))
    assert "invalid_json" in prepared  # the planted bad lines, counted
    steps = [e for e in alice.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert sorted(e.data["step"] for e in steps) == list(range(1, 7))
    assert any(m.startswith(("Gate passed", "Gate failed")) for m in said)
    promoted = any(m.startswith("Promoted ft-support:1") for m in said)
    assert promoted or any(m.startswith("Not promoted") for m in said)
    aliases = [a.ref for a in service.registry().aliases("ft-support")]
    assert aliases == (["ft-support:prod"] if promoted else [])

    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [(c.fine_tuned_model_checkpoint, c.step_number) for c in checkpoints] == [("ft-support:1", 6)]
    results = {alice.files.retrieve(f).filename: f for f in done.result_files}
    assert set(results) == {"rejects.jsonl", "step_metrics.csv"}
    rejects = [json.loads(line) for line in alice.files.content(results["rejects.jsonl"]).text.splitlines()]
    assert rejects and all(r["reason"] and r["line"] for r in rejects)
    assert alice.files.content(results["step_metrics.csv"]).text.splitlines()[0] == "step,train_loss,valid_loss"

    answer = alice.chat.completions.create(
        model=done.fine_tuned_model, messages=[{"role": "user", "content": "I was charged twice"}], max_tokens=8
    )
    assert answer.choices[0].message.content is not None
    version = service.registry().get("ft-support:1")
    assert version.dataset_hash and version.eval_report and version.kind == "adapter"


def test_cancel_mid_training_stops_the_ray_job_and_registers_nothing(service, tmp_path):
    from ray.job_submission import JobSubmissionClient

    alice = service.client()
    with open(tickets(tmp_path / "more.jsonl", 300, seed=12), "rb") as data:
        uploaded = alice.files.create(file=data, purpose="fine-tune")
    job = alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, suffix="cancelled")
    running = wait_for(alice, job.id, lambda j: j.model_extra["x_rayft"]["stage"] == "train")
    ray_job = running.model_extra["x_rayft"]["ray_job"]

    cancelled = alice.fine_tuning.jobs.cancel(job.id)

    assert cancelled.status == "cancelled"
    wait_for(alice, job.id, lambda j: j.model_extra["x_rayft"]["stage"] is None, ended=())  # the runner cleaned up
    assert str(JobSubmissionClient(service.head.address).get_job_status(ray_job)) == "STOPPED"
    assert service.registry().list("ft-cancelled") == []
    assert alice.fine_tuning.jobs.retrieve(job.id).fine_tuned_model is None
    with pytest.raises(openai.ConflictError, match="already cancelled"):
        alice.fine_tuning.jobs.cancel(job.id)


def test_a_bad_file_fails_at_validation_naming_its_lines_and_refusals_are_openai_errors(service, tmp_path):
    alice, bob = service.client(), service.client(BOB)
    bad = tmp_path / "bad.jsonl"
    good = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Category: billing"}]}
    bad.write_text(json.dumps(good) + "\n" + "{not json\n" + json.dumps({"messages": []}) + "\n")
    with open(bad, "rb") as data:
        uploaded = alice.files.create(file=data, purpose="fine-tune")

    job = alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    failed = wait_for(alice, job.id, lambda j: j.status == "failed", timeout_s=60)

    assert failed.error.code == "invalid_training_file" and failed.error.param == "training_file"
    assert "bad.jsonl line 2: invalid_json" in failed.error.message and "line 3: empty_messages" in failed.error.message
    rejects = alice.files.content(failed.result_files[0]).text.splitlines()
    assert [json.loads(r)["line"] for r in rejects] == [2, 3]

    with pytest.raises(openai.BadRequestError) as refused:
        alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, hyperparameters={"n_epochs": 0})
    assert refused.value.body["param"] == "hyperparameters.n_epochs"
    with pytest.raises(openai.BadRequestError) as unknown:
        alice.fine_tuning.jobs.create(model="llama-70b", training_file=uploaded.id)
    assert unknown.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(job.id)  # another key's job does not exist for bob
    with pytest.raises(openai.NotFoundError):
        bob.files.content(uploaded.id)
    assert job.id in [j.id for j in service.client(ADMIN).fine_tuning.jobs.list(limit=50).data]
    with pytest.raises(openai.AuthenticationError):
        service.client("wrong-key").files.list()
