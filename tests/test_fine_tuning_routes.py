"""The files and fine-tuning routes without Ray or Serve: the routers on a FastAPI app of their own,
their dependencies pointed at a stand-in for the ingress replica (its guard and its fine-tuning
service are the real ones), called with the official `openai` client over Starlette's test
transport. Declared query and path parameters refuse what is out of range with a 400 naming them
(never a 500), request bodies are the strict models, and another project's objects are 404s."""

import io
import json

import openai
import pytest
from fastapi import FastAPI
from starlette.testclient import TestClient

from rayft.config import FineTuningConfig, ProjectConfig, ServeConfig
from rayft.projects import ProjectDirectory
from rayft.service.jobs import FineTuningJobs
from rayft.service.pipeline import ServicePaths
from rayft.serving import fine_tuning_routes
from rayft.serving.auth import KeyCheck
from rayft.serving.fine_tuning_routes import FineTuningService
from rayft.serving.guard import Guard
from rayft.serving.http_app import answer_errors_as_openai, current_server
from rayft.serving.metrics import ServingMetrics

KEYS = {"support": "k-support", "legal": "k-legal", "admin": "k-admin"}
CHAT = {"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}


class Replica:
    """What the routers ask of the ingress replica: its guard and its fine-tuning service."""

    def __init__(self, tmp_path):
        serve = ServeConfig(admin_keys=[KEYS["admin"]])
        config = FineTuningConfig(enabled=True)
        projects = ProjectDirectory.of(
            {name: ProjectConfig(keys=[KEYS[name]]) for name in ("support", "legal")}, config
        )
        paths = ServicePaths(home=str(tmp_path), registry=str(tmp_path / "r.db"), files=str(tmp_path / "f"), jobs="")
        jobs = FineTuningJobs.open(config, {"tiny"}, "/base", paths, projects)
        keys = KeyCheck(projects.all_keys(), serve.admin_keys)
        self.guard = Guard(serve, keys, projects, ServingMetrics(replica="test"))
        self.fine_tuning = FineTuningService(jobs, None, serve.max_request_bytes, serve.max_json_depth)


@pytest.fixture
def app(tmp_path) -> FastAPI:
    app = FastAPI()
    app.include_router(fine_tuning_routes.router)
    answer_errors_as_openai(app)
    replica = Replica(tmp_path)
    app.dependency_overrides[current_server] = lambda: replica
    return app


def client(app: FastAPI, who: str) -> openai.OpenAI:
    transport = TestClient(app, base_url="http://test")
    return openai.OpenAI(base_url="http://test/v1", api_key=KEYS[who], http_client=transport, max_retries=0)


def upload(client: openai.OpenAI):
    return client.files.create(file=("t.jsonl", io.BytesIO((json.dumps(CHAT) + "\n").encode())), purpose="fine-tune")


@pytest.mark.parametrize("limit", ["²", "1" + "0" * 5000, "0", "101", "-3", "1.5", ""])
def test_a_limit_out_of_range_is_a_400_naming_it(app, limit):
    answer = TestClient(app).get(
        "/v1/files", params={"limit": limit}, headers={"Authorization": f"Bearer {KEYS['support']}"}
    )
    error = answer.json()["error"]
    assert answer.status_code == 400 and error["param"] == "limit" and error["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    "path, param",
    [
        ("/v1/files?purpose=batch", "purpose"),
        ("/v1/files?after=" + "x" * 200, "after"),
        ("/v1/fine_tuning/jobs/" + "j" * 200, "fine_tuning_job_id"),
        ("/v1/fine_tuning/jobs/ftjob-1/events?limit=1000", "limit"),
    ],
)
def test_other_parameters_out_of_range_are_400s_naming_them(app, path, param):
    answer = TestClient(app).get(path, headers={"Authorization": f"Bearer {KEYS['support']}"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == param


def test_the_official_client_works_and_another_projects_objects_are_404s(app):
    support, legal, admin = client(app, "support"), client(app, "legal"), client(app, "admin")
    uploaded = upload(support)
    job = support.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, suffix="bot")
    assert job.model_extra["x_rayft"]["registry_name"] == "ft-support-bot"
    with pytest.raises(openai.NotFoundError):
        legal.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        legal.files.content(uploaded.id)
    with pytest.raises(openai.BadRequestError) as borrowed:
        legal.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    assert borrowed.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as bad:
        support.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, hyperparameters={"n_epochs": 0})
    assert bad.value.body["param"] == "hyperparameters.n_epochs"
    assert [j.id for j in admin.fine_tuning.jobs.list().data] == [job.id]
    with pytest.raises(openai.ConflictError):
        support.files.delete(uploaded.id)  # the job reads it
    with pytest.raises(openai.BadRequestError) as chat_for_dpo:
        support.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id, method={"type": "dpo"})
    assert chat_for_dpo.value.body["param"] == "training_file"
    with pytest.raises(openai.BadRequestError) as validating:
        support.fine_tuning.jobs.pause(job.id)
    assert validating.value.body["param"] == "fine_tuning_job_id" and "validating_files" in validating.value.message
    with pytest.raises(openai.NotFoundError):
        legal.fine_tuning.jobs.pause(job.id)
    assert support.fine_tuning.jobs.checkpoints.list(job.id).data == []
    assert support.fine_tuning.jobs.cancel(job.id).status == "cancelled"
    assert support.files.delete(uploaded.id).deleted
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(
            base_url="http://test/v1", api_key="nope", http_client=TestClient(app), max_retries=0
        ).files.list()
