"""The OpenAI fine-tuning API end to end, with the official `openai` client, against a real `rayft
serve` process on a real `ray start` head with the machine's real CPU count, whose Jobs API runs
each job's stages. Two projects and an admin: a job runs to `succeeded` across a server restart,
its gate pinned to pass and its alias moved; the other project sees, reads, cancels, deletes,
lists, serves from and promotes over none of it (each a 404); a DPO job continuing that model is
paused in training, resumed (`rayft train --resume`) and succeeds, its epoch checkpoints listed and
served by name; quotas answer 413/429 naming the limit; an expired file is gone after the sweep;
every route's response is an OpenAI object (`conformance.py`); a fuzzer reaches every parameter
with no 5xx; a stage made unschedulable says why in the job's events and fails; a job whose head
was replaced fails and the queue moves on; and no key appears in any output."""

import json
import os
import shutil
import sqlite3
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest
from conformance import assert_conforms, route_schema
from ray_head import running_head, start_head, stop_head
from serve_process import ServeProcess, free_port

pytestmark = [pytest.mark.ray, pytest.mark.vllm, pytest.mark.timeout(1200)]

OWN_RAY_HEAD = True  # the server runs on its own `ray start` head (its Jobs API runs the stages)
CPUS = len(os.sched_getaffinity(0))  # what a user's `ray start --head` gets on this machine
KEYS = {  # distinct, recognisable, set everywhere keys go; none may appear in any output
    "support": "sk-ft-support-5e1d7a90",  # serve.projects.support.keys, through ${FT_SUPPORT_KEY}
    "legal": "sk-ft-legal-8c24b6f3",  # serve.projects.legal.keys, written in the config
    "loner": "sk-ft-loner-41f0c2aa",  # RAYFT_API_KEYS: a project of its own
    "admin": "sk-ft-admin-9a7e3b15",  # serve.admin_keys
    "ana": "sk-ft-review-ana-2d6c",  # review.reviewers
    "ben": "sk-ft-review-ben-7f3a",  # RAYFT_REVIEWER_KEYS
}


def server_config(tiny_model: str, port: int) -> dict:
    """Small stages (a few steps; eval on perplexity, which a few steps at this rate surely lower,
    so the gate's outcome is pinned: it passes), two projects, tight quotas for `legal`."""
    return {
        "name": "ftsvc",
        "model": {"base": tiny_model},
        "data": {"label_regex": r"Category:\s*(\w+)", "max_tokens": 256, "warn_min_records": 0},
        "train": {"max_steps": 6, "batch_size": 16, "eval_every": 3, "checkpoint_every": 6, "max_seq_len": 256},
        "eval": {
            "task": "perplexity",
            "limit": 20,
            "few_shot": 0,
            "forgetting": False,
            "max_new_tokens": 4,
            "gate": {"waive": ["beats_few_shot", "forgetting"]},  # not run here, to keep the eval short
        },
        "serve": {
            "port": port,
            "max_model_len": 1024,
            "admin_keys": [KEYS["admin"]],
            "projects": {
                "support": {"keys": ["${FT_SUPPORT_KEY}"]},
                "legal": {"keys": [KEYS["legal"]], "max_files": 2, "max_file_bytes_total": 200_000},
            },
            "fine_tuning": {
                "enabled": True,
                "poll_s": 0.5,
                "max_rejected_fraction": 0.05,
                "stage_wait_s": 2,
                "unschedulable_timeout_s": 20,
            },
        },
        "review": {"reviewers": {"ana": KEYS["ana"]}},
    }


class Service:
    """The head, the server on it and a client per key; the server can be restarted (SIGTERM, a new
    one on the same head, home and port) and the head replaced (both stopped, new ones started)."""

    def __init__(self, head, tiny_model: str, folder: Path):
        self.config = server_config(tiny_model, free_port())
        self.folder, self.home = folder, folder / "home"
        self.head = head
        self.process = self.start()
        self.errors: list[str] = []  # every error body the clients got

    @property
    def env(self) -> dict[str, str]:
        return {
            "RAY_ADDRESS": f"127.0.0.1:{self.head.ports['--port']}",
            "RAYFT_HOME": str(self.home),
            "FT_SUPPORT_KEY": KEYS["support"],
            "RAYFT_API_KEYS": KEYS["loner"],
            "RAYFT_REVIEWER_KEYS": f"ben={KEYS['ben']}",
        }

    def start(self) -> ServeProcess:
        return ServeProcess(self.config, self.folder, self.env)

    def restart(self) -> None:
        assert self.process.stop() == 0
        self.process = self.start()

    def replace_head(self) -> None:
        """What an operator does after losing the head: a new `ray start`, the server started on it.
        The old head's logs are kept beside the server's (the secrets check reads them)."""
        self.process.kill()
        kept = self.folder / f"head-{self.head.ports['--port']}"
        shutil.copytree(self.head.temp_dir, kept, symlinks=True, ignore=special_files)
        stop_head(self.head)
        self.head = start_head(num_cpus=CPUS)
        self.process = self.start()

    def client(self, who: str = "support") -> openai.OpenAI:
        return openai.OpenAI(base_url=self.process.url + "/v1", api_key=KEYS[who], max_retries=0, timeout=60)

    def raw(self, method: str, route: str, who: str = "support", json_body=None, form=None, **values) -> httpx.Response:
        """`route` (OpenAI's path template) called over the wire with `values` in its path; a 2xx JSON
        body checked against OpenAI's schema for the route, an error against its error body (and kept
        for the secrets check)."""
        response = httpx.request(
            method,
            self.process.url + route.format(**values),
            headers={"Authorization": f"Bearer {KEYS[who]}"},
            params={k: v for k, v in values.items() if f"{{{k}}}" not in route},
            json=json_body,
            files=form and {"file": form.pop("file")},
            data=form,
            timeout=60,
        )
        if response.status_code >= 400:
            self.errors.append(response.text)
            assert_conforms("ErrorResponse", response.json())
        elif not route.endswith("/content"):
            assert_conforms(route_schema(method, route), response.json())
        return response

    def registry(self):
        from rayft.registry import Registry

        return Registry(self.home / "registry.db")


def special_files(folder: str, names: list[str]) -> list[str]:
    """Sockets and pipes in a head's folder: not copied."""
    return [n for n in names if not (Path(folder, n).is_dir() or Path(folder, n).is_file())]


@pytest.fixture(scope="module")
def service(tiny_model, tmp_path_factory):
    with running_head(num_cpus=CPUS) as head:
        running = Service(head, tiny_model, tmp_path_factory.mktemp("ft"))
        try:
            yield running
        finally:
            running.process.kill()
            if running.head is not head:  # replaced: running_head stops the first one only
                stop_head(running.head)


def tickets(path: Path, n: int, seed: int) -> Path:
    from rayft.data.samples import write_support_tickets

    return write_support_tickets(path, n=n, seed=seed)


def wait_for(client: openai.OpenAI, job_id: str, done, timeout_s: float = 480, ended=("failed", "cancelled")):
    """The job once `done(job)`; an AssertionError if it ends (a status in `ended`) otherwise."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if done(job):
            return job
        if job.status in ended:
            raise AssertionError(f"{job_id} {job.status}: {job.error}")
        time.sleep(0.5)
    raise AssertionError(f"{job_id} still {job.status} ({job.model_extra.get('x_rayft')}) after {timeout_s} s")


def messages(client: openai.OpenAI, job_id: str) -> list[str]:
    return [e.message for e in reversed(client.fine_tuning.jobs.list_events(job_id, limit=100).data)]


def upload(client: openai.OpenAI, path: Path, **options):
    with open(path, "rb") as data:
        return client.files.create(file=data, purpose="fine-tune", **options)


def stage_of(job) -> str | None:
    return job.model_extra["x_rayft"]["stage"]


def test_a_projects_job_runs_to_succeeded_on_a_small_head_and_no_other_project_sees_any_of_it(service, tmp_path):
    support, legal, admin = service.client("support"), service.client("legal"), service.client("admin")
    uploaded = upload(support, tickets(tmp_path / "tickets.jsonl", 300, seed=11))
    assert uploaded.purpose == "fine-tune" and uploaded.filename == "tickets.jsonl" and uploaded.bytes > 0
    job = support.fine_tuning.jobs.create(
        model="tiny",
        training_file=uploaded.id,
        hyperparameters={"n_epochs": 1, "learning_rate_multiplier": 25},
        suffix="support",
        seed=3,
        metadata={"promote_to": "prod"},
    )
    assert job.status == "validating_files" and job.model_extra["x_rayft"]["registry_name"] == "ft-support-support"

    # Another project: the job and the file do not exist for it, and nothing of it is listed.
    for call in (
        lambda: legal.fine_tuning.jobs.retrieve(job.id),
        lambda: legal.fine_tuning.jobs.cancel(job.id),
        lambda: legal.fine_tuning.jobs.list_events(job.id),
        lambda: legal.fine_tuning.jobs.checkpoints.list(job.id),
        lambda: legal.files.retrieve(uploaded.id),
        lambda: legal.files.content(uploaded.id),
        lambda: legal.files.delete(uploaded.id),
    ):
        with pytest.raises(openai.NotFoundError):
            call()
    with pytest.raises(openai.BadRequestError) as borrowed:
        legal.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    assert borrowed.value.body["param"] == "training_file"
    assert legal.fine_tuning.jobs.list().data == [] and legal.files.list().data == []
    assert job.id in [j.id for j in admin.fine_tuning.jobs.list(limit=50).data]  # the admin sees it
    with pytest.raises(openai.ConflictError):
        support.files.delete(uploaded.id)  # a job still reads it

    queued = wait_for(support, job.id, lambda j: j.status != "validating_files")
    assert queued.estimated_finish and queued.model_extra["x_rayft"]["estimate"]["steps"] == 6
    wait_for(support, job.id, lambda j: stage_of(j) == "train")
    service.restart()  # mid-training: the Ray job keeps running on the head; the new server watches it
    support, legal, admin = service.client("support"), service.client("legal"), service.client("admin")
    done = wait_for(support, job.id, lambda j: j.status == "succeeded")

    model = "ft-support-support:1"
    assert done.fine_tuned_model == model and done.trained_tokens > 0 and done.finished_at
    said = messages(support, job.id)
    assert said[0] == "Job created; validating tickets.jsonl" and said[-1] == f"Job succeeded: fine_tuned_model {model}"
    for stage in ("data", "train", "eval"):  # each stage ran once: the restart re-attached, not restarted
        assert sum(m.startswith(f"Stage {stage} running as Ray job") for m in said) == 1
    assert [m for m in said if "waiting for resources" in m] == []  # the server left its stages room
    assert "invalid_json" in next(m for m in said if m.startswith("Data prepared"))
    steps = [e for e in support.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"]
    assert sorted(e.data["step"] for e in steps) == list(range(1, 7))
    assert "Gate passed" in said and f"Promoted {model} to ft-support-support:prod" in said
    aliases = [a.ref for a in service.registry().aliases("ft-support-support")]
    assert aliases == ["ft-support-support:ckpt-step-6", "ft-support-support:prod"]  # its one epoch's end, and prod
    checkpoints = support.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [(c.fine_tuned_model_checkpoint, c.step_number) for c in checkpoints] == [(model, 6)]
    results = {support.files.retrieve(f).filename: f for f in done.result_files}
    assert set(results) == {"rejects.jsonl", "step_metrics.csv"}
    rejects = [json.loads(line) for line in support.files.content(results["rejects.jsonl"]).text.splitlines()]
    assert rejects and all(r["reason"] and r["line"] for r in rejects)
    version = service.registry().get(model)
    assert version.project == "support" and version.dataset_hash and version.eval_report

    # Served to its project (and the admin), by name and by alias; a 404 to every other project.
    for name in (model, "ft-support-support:prod"):
        answer = support.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
        assert answer.choices[0].message.content is not None
        with pytest.raises(openai.NotFoundError):
            legal.chat.completions.create(model=name, messages=[{"role": "user", "content": "hi"}], max_tokens=4)
    assert model in [m.id for m in support.models.list().data] and model in [m.id for m in admin.models.list().data]
    assert not any("ft-support" in m.id for m in legal.models.list().data)
    assert "tiny" in [m.id for m in legal.models.list().data]

    # The other project's own job of the same suffix and alias makes its own name: nothing to move over.
    theirs = legal.fine_tuning.jobs.create(
        model="tiny", training_file=upload(legal, tmp_path / "tickets.jsonl").id, suffix="support",
        metadata={"promote_to": "prod"},
    )  # fmt: skip
    assert theirs.model_extra["x_rayft"]["registry_name"] == "ft-legal-support"
    legal.fine_tuning.jobs.cancel(theirs.id)
    assert {job.id, theirs.id} <= {j.id for j in admin.fine_tuning.jobs.list(limit=50).data}  # and both projects'
    assert service.registry().get("ft-support-support:prod").ref == model

    # Every route's answer, as it goes over the wire, is the OpenAI object (checked in `raw`).
    job_route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    service.raw("GET", "/v1/files", limit=5)
    line = json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]})
    service.raw("POST", "/v1/files", who="legal", form={"file": ("one.jsonl", line.encode()), "purpose": "fine-tune"})
    service.raw("GET", "/v1/files/{file_id}", file_id=uploaded.id)
    service.raw("GET", "/v1/files/{file_id}/content", file_id=uploaded.id)
    service.raw("GET", "/v1/fine_tuning/jobs", limit=5)
    service.raw("GET", job_route, fine_tuning_job_id=job.id)
    service.raw("GET", job_route + "/events", fine_tuning_job_id=job.id, limit=100)
    service.raw("GET", job_route + "/checkpoints", fine_tuning_job_id=job.id)
    service.raw("GET", "/v1/models")
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    service.raw("POST", "/v1/chat/completions", json_body=body)
    assert service.raw("POST", "/v1/chat/completions", who="legal", json_body=body).status_code == 404
    assert service.raw("GET", job_route, who="legal", fine_tuning_job_id=job.id).status_code == 404
    assert service.raw("DELETE", "/v1/files/{file_id}", file_id=results["step_metrics.csv"]).json()["deleted"]
    created = service.raw(
        "POST", "/v1/fine_tuning/jobs", who="legal", json_body={"model": "tiny", "training_file": theirs.training_file}
    )
    assert (
        service.raw("POST", job_route + "/cancel", who="legal", fine_tuning_job_id=created.json()["id"]).status_code
        == 200
    )


def test_a_dpo_job_continuing_the_projects_model_pauses_resumes_and_serves_its_epoch_checkpoints(service, tmp_path):
    """Continues a model of the project's (an adapter registered here, as an earlier job leaves one)."""
    from ray.job_submission import JobSubmissionClient

    from rayft.data.preference_samples import write_preference_pairs
    from rayft.tiny import random_adapter

    support, legal, loner = service.client("support"), service.client("legal"), service.client("loner")
    base = service.config["model"]["base"]
    start = service.registry().register(
        "ft-support-earlier", "adapter", base, random_adapter(base, tmp_path / "earlier", seed=11), project="support"
    )
    # 70 pairs and 3 planted bad lines: ~53 train pairs, batch 16, so 2 epochs end within the 6 steps
    pairs = upload(support, write_preference_pairs(tmp_path / "pairs.jsonl", 70, seed=4))
    job = support.fine_tuning.jobs.create(
        model=start.ref,
        training_file=pairs.id,
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2, "n_epochs": 2, "batch_size": 16}}},
        seed=5,
    )
    assert job.model == start.ref and job.method.type == "dpo" and job.method.dpo.hyperparameters.beta == 0.2
    assert job.model_extra["x_rayft"]["init_from"] == start.ref
    chat = upload(support, tickets(tmp_path / "chat.jsonl", 20, seed=1))
    with pytest.raises(openai.BadRequestError) as not_pairs:  # a DPO job trains on preference pairs only
        support.fine_tuning.jobs.create(
            model="tiny", training_file=pairs.id, validation_file=chat.id, method={"type": "dpo"}
        )
    assert not_pairs.value.body["param"] == "validation_file"
    with pytest.raises(openai.BadRequestError) as theirs:  # another project's model: as unknown as no model
        loner.fine_tuning.jobs.create(model=start.ref, training_file=upload(loner, tmp_path / "pairs.jsonl").id)
    assert theirs.value.body["param"] == "model" and theirs.value.body["code"] == "model_not_available"

    # Paused once its training run has begun: the stage's Ray job stops; resumed, it continues that run.
    training = wait_for(support, job.id, lambda j: stage_of(j) == "train")
    run = service.home / "runs" / job.id / start.name
    deadline = time.monotonic() + 240
    while not (run.is_dir() and any(run.iterdir())) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert run.is_dir() and any(run.iterdir()), "the training run never began"
    assert support.fine_tuning.jobs.pause(job.id).status == "paused"
    jobs = JobSubmissionClient(service.head.address)
    first = training.model_extra["x_rayft"]["ray_job"]
    deadline = time.monotonic() + 60
    while str(jobs.get_job_status(first)) not in ("STOPPED", "SUCCEEDED", "FAILED") and time.monotonic() < deadline:
        time.sleep(0.5)
    paused = support.fine_tuning.jobs.retrieve(job.id)
    assert paused.status == "paused" and stage_of(paused) == "train"
    route = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"
    assert service.raw("POST", route + "/resume", who="legal", fine_tuning_job_id=job.id).status_code == 404
    resumed = service.raw("POST", route + "/resume", fine_tuning_job_id=job.id)  # checked against OpenAI's schema
    assert resumed.json()["status"] == "queued"
    again = wait_for(support, job.id, lambda j: j.model_extra["x_rayft"]["ray_job"] not in (None, first))
    said = messages(support, job.id)
    assert "Job paused while running (stage: train)" in said and "Job resumed (stage: train); queued" in said
    assert str(jobs.get_job_status(first)) == "STOPPED"  # its run had to start, export and register yet
    assert f"Stage train stopped for the pause (Ray job {first})" in said and stage_of(again) == "train"
    assert "--resume" in jobs.get_job_info(again.model_extra["x_rayft"]["ray_job"]).entrypoint
    done = wait_for(support, job.id, lambda j: j.status == "succeeded")
    refused = service.raw("POST", route + "/pause", fine_tuning_job_id=job.id)
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "fine_tuning_job_id"

    model = done.fine_tuned_model
    version = service.registry().get(model)
    assert model.startswith(f"{start.name}:") and version.parent == start.ref  # the next version of it
    assert version.config["train"]["method"] == "dpo" and version.config["train"]["dpo"]["beta"] == 0.2
    steps = sorted(
        e.data["step"] for e in support.fine_tuning.jobs.list_events(job.id, limit=100).data if e.type == "metrics"
    )
    assert steps == list(range(1, steps[-1] + 1))  # the resumed run trained to the end

    # One checkpoint per epoch, the last first, each served by its name to this project only.
    checkpoints = support.fine_tuning.jobs.checkpoints.list(job.id).data
    assert [c.step_number for c in checkpoints] == sorted({c.step_number for c in checkpoints}, reverse=True)
    assert len(checkpoints) == 2 and checkpoints[0].step_number == steps[-1] and checkpoints[0].metrics.train_loss
    service.raw("GET", route + "/checkpoints", fine_tuning_job_id=job.id)
    # the final model is one epoch's end state (the best one): the other is a version of its own
    (epoch_end,) = [c.fine_tuned_model_checkpoint for c in checkpoints if c.fine_tuned_model_checkpoint != model]
    assert service.registry().get(epoch_end).project == "support"
    hello = [{"role": "user", "content": "hi"}]
    answer = support.chat.completions.create(model=epoch_end, messages=hello, max_tokens=4)
    assert answer.model == epoch_end and answer.choices[0].message.content is not None
    with pytest.raises(openai.NotFoundError):
        legal.chat.completions.create(model=epoch_end, messages=hello, max_tokens=4)


def test_quotas_answer_413_and_429_naming_the_limit_and_expired_files_are_swept(service, tmp_path):
    legal = service.client("legal")
    small = tmp_path / "small.jsonl"
    small.write_text(
        json.dumps({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}) + "\n"
    )
    for existing in legal.files.list().data:  # what the other tests left
        legal.files.delete(existing.id)
    expiring = upload(legal, small, expires_after={"anchor": "created_at", "seconds": 3600})
    assert expiring.expires_at == expiring.created_at + 3600
    upload(legal, small)
    with pytest.raises(openai.RateLimitError, match=r"serve.projects.legal.max_files = 2"):
        upload(legal, small)  # a third file
    with pytest.raises(openai.BadRequestError) as early:
        upload(legal, small, expires_after={"anchor": "created_at", "seconds": 60})
    assert early.value.body["param"] == "expires_after[seconds]"
    legal.files.delete(legal.files.list().data[0].id)
    big = tickets(tmp_path / "big.jsonl", 800, seed=2)
    with pytest.raises(openai.APIStatusError, match=r"serve.projects.legal.max_file_bytes_total = 200000") as full:
        upload(legal, big)
    assert full.value.status_code == 413
    assert len(legal.files.list().data) == 1  # the refused upload left nothing

    with sqlite3.connect(service.home / "registry.db") as db:  # an hour on: the file's time has come
        db.execute("UPDATE ft_files SET expires_at = ? WHERE id = ?", (int(time.time()) - 1, expiring.id))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and expiring.id in [f.id for f in legal.files.list().data]:
        time.sleep(0.5)
    with pytest.raises(openai.NotFoundError):
        legal.files.retrieve(expiring.id)
    assert not (service.home / "files" / expiring.id).exists()


def test_query_and_body_parameters_are_checked_and_fuzzing_finds_no_5xx(service):
    """limit=² and a 5,000-digit limit are 400s naming `limit`; schemathesis then sends valid and
    invalid values for every query, path and body parameter of the files and fine-tuning routes."""
    import schemathesis
    from hypothesis import HealthCheck, given, settings

    for bad in ("²", "1" + "0" * 5000, "0", "101", "-1"):
        answer = service.raw("GET", "/v1/files", limit=bad)
        assert answer.status_code == 400 and answer.json()["error"]["param"] == "limit", answer.text
    answer = service.raw("GET", "/v1/fine_tuning/jobs", after="x" * 500)
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "after"

    schema = schemathesis.openapi.from_url(service.process.url + "/openapi.json")
    fine_tuning = schema.include(path_regex=r"^/v1/(files|fine_tuning)")
    declared = set()
    for operation in (result.ok() for result in fine_tuning.get_all_operations()):
        declared |= {(operation.method.upper(), operation.path, p.name) for p in operation.query}
    create = schema.raw_schema["components"]["schemas"]["CreateFineTuningJobRequest"]["properties"]
    declared |= {("POST", "/v1/fine_tuning/jobs", name) for name in create}
    reached, failures = set(), []

    def send(case) -> None:
        reached.update((case.method.upper(), case.path, name) for name in (case.query or {}))
        if isinstance(case.body, dict):
            reached.update((case.method.upper(), case.path, name) for name in case.body)
        response = case.call(headers={"Authorization": f"Bearer {KEYS['loner']}"}, timeout=60)
        if response.status_code >= 500:
            failures.append((case.method, case.formatted_path, case.query, str(case.body)[:200], response.text[:300]))
        elif response.status_code >= 400:
            service.errors.append(response.text)

    fuzz = settings(
        max_examples=15, derandomize=True, deadline=None, database=None, suppress_health_check=list(HealthCheck)
    )
    for operation in (result.ok() for result in fine_tuning.get_all_operations()):  # each gets its examples
        for mode in (schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE):
            fuzz(given(case=operation.as_strategy(generation_mode=mode))(send))()
    assert not failures, failures[:5]
    assert declared and declared <= reached, sorted(declared - reached)


def test_an_unschedulable_stage_says_why_within_seconds_and_fails_after_the_timeout(service, tmp_path):
    from ray.job_submission import JobSubmissionClient

    support = service.client("support")
    jobs = JobSubmissionClient(service.head.address)
    blocker = jobs.submit_job(  # someone else's work holds every CPU of the head
        entrypoint=f"{sys.executable} -c 'import time; time.sleep(600)'", entrypoint_num_cpus=CPUS
    )
    try:
        deadline = time.monotonic() + 60
        while str(jobs.get_job_status(blocker)) != "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.5)
        uploaded = upload(support, tickets(tmp_path / "t.jsonl", 120, seed=5))
        job = support.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, suffix="stuck")
        wait_for(support, job.id, lambda j: stage_of(j) == "data")
        warned = wait_for(  # said within 10 s of the stage's start
            support, job.id, lambda j: any("waiting for resources" in m for m in messages(support, j.id)), timeout_s=10
        )
        warning = next(m for m in messages(support, warned.id) if "waiting for resources" in m)
        assert warning.startswith("Stage data is waiting for resources: needs ") and "free now: CPU 0 of" in warning
        failed = wait_for(support, job.id, lambda j: j.status == "failed", timeout_s=90, ended=("cancelled",))
        assert failed.error.code == "stage_unschedulable" and "CPU 0 of" in failed.error.message
    finally:
        jobs.stop_job(blocker)


def test_a_job_whose_ray_job_vanished_with_a_replaced_head_fails_and_the_next_job_runs(service, tmp_path):
    support, loner = service.client("support"), service.client("loner")
    first = support.fine_tuning.jobs.create(
        model="tiny", training_file=upload(support, tickets(tmp_path / "a.jsonl", 120, seed=6)).id
    )
    running = wait_for(support, first.id, lambda j: stage_of(j) in ("data", "train"))
    behind = loner.fine_tuning.jobs.create(
        model="tiny", training_file=upload(loner, tickets(tmp_path / "b.jsonl", 120, seed=7)).id
    )
    assert wait_for(loner, behind.id, lambda j: j.status != "validating_files").status == "queued"  # one runs at a time

    service.replace_head()
    support, loner = service.client("support"), service.client("loner")
    lost = wait_for(support, first.id, lambda j: j.status == "failed", timeout_s=120, ended=("cancelled", "succeeded"))
    assert lost.error.code == "stage_lost" and running.model_extra["x_rayft"]["ray_job"] in lost.error.message
    assert "no longer exists on the cluster" in lost.error.message
    moved = wait_for(loner, behind.id, lambda j: j.status != "queued", timeout_s=120, ended=("failed", "cancelled"))
    assert moved.status in ("running", "succeeded")  # it started once the lost one failed
    said = messages(loner, behind.id)
    assert said[said.index("Job queued") + 1] == "Job started"
    if moved.status == "running":
        loner.fine_tuning.jobs.cancel(behind.id)


def test_no_key_appears_in_any_output(service):
    """Config errors are checked in test_projects.py; here everything this module's server, its jobs
    and the head wrote: the console, the logs (rayft's and Ray's, jobs included), every event, every
    error body, /openapi.json, the jobs' own configs."""
    outputs: list[tuple[str, str]] = [("console", "\n".join(service.process.printed))]
    outputs += [("error bodies", "\n".join(service.errors))]
    outputs += [("openapi", httpx.get(service.process.url + "/openapi.json", timeout=30).text)]
    admin = service.client("admin")
    for job in admin.fine_tuning.jobs.list(limit=100).data:
        outputs.append(
            (
                f"events of {job.id}",
                json.dumps([e.model_dump() for e in admin.fine_tuning.jobs.list_events(job.id, limit=100).data]),
            )
        )
        outputs.append((f"job {job.id}", job.model_dump_json()))
    heads = [Path(service.head.temp_dir), *service.folder.glob("head-*")]  # the head now, and any it replaced
    folders = [service.home / "logs", service.home / "fine_tuning", *heads, service.folder / "stderr.log"]
    for folder in folders:
        files = (
            [folder]
            if folder.is_file()
            else [p for p in folder.rglob("*") if p.is_file() and p.stat().st_size < 50_000_000]
        )
        outputs += [(str(p), p.read_bytes().decode("utf-8", "replace")) for p in files]
    assert len(outputs) > 20
    leaked = [(where, who) for where, text in outputs for who, key in KEYS.items() if key in text]
    assert not leaked, leaked[:10]
