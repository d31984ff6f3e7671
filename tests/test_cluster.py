"""Cluster: manifests checked against our config and Ray's schemas; `rayft submit` / `rayft jobs`
against a real `ray start --head` (its own temp dir and ports), with and without token auth."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from rayft import storage
from rayft.cli import build_parser, main
from rayft.commands import cmd_data_prepare, cmd_eval, cmd_quantize, cmd_serve, cmd_train
from rayft.config import load_config

OWN_RAY_HEAD = True  # the Jobs tests run their own `ray start` head: conftest must not restart its Ray
ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "cluster"
GPU_CONFIG = ROOT / "configs" / "cluster-gpu.yaml"
MANIFESTS = {
    name: yaml.safe_load((CLUSTER / "kuberay" / name).read_text())
    for name in ("raycluster.yaml", "rayjob-train.yaml", "rayservice.yaml")
}
LAUNCHER = yaml.safe_load((CLUSTER / "launcher" / "aws-gpu.yaml").read_text())
GPUS_PER_INSTANCE = {"g5.2xlarge": 1, "g5.12xlarge": 4, "g5.48xlarge": 8, "p4d.24xlarge": 8, "p5.48xlarge": 8}


def cluster_specs():
    """(manifest, RayCluster spec) for the three KubeRay resources."""
    specs = {
        "raycluster.yaml": MANIFESTS["raycluster.yaml"]["spec"],
        "rayjob-train.yaml": MANIFESTS["rayjob-train.yaml"]["spec"]["rayClusterSpec"],
        "rayservice.yaml": MANIFESTS["rayservice.yaml"]["spec"]["rayClusterConfig"],
    }
    return list(specs.items())


def containers(spec):
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    return [c for g in groups for c in g["template"]["spec"]["containers"]]


def pod_gpus(group) -> int:
    return int(group["template"]["spec"]["containers"][0]["resources"]["limits"].get("nvidia.com/gpu", 0))


def mounted_config_dir(spec) -> str:
    head = spec["headGroupSpec"]["template"]["spec"]
    volume = next(v["name"] for v in head["volumes"] if v.get("configMap", {}).get("name") == "rayft-configs")
    return next(m["mountPath"] for m in head["containers"][0]["volumeMounts"] if m["name"] == volume)


# ---------------------------------------------------------------- manifests (no Ray started)


@pytest.mark.parametrize(
    "name,kind", [("raycluster.yaml", "RayCluster"), ("rayjob-train.yaml", "RayJob"), ("rayservice.yaml", "RayService")]
)
def test_kuberay_manifests_have_the_required_fields(name, kind):
    import ray

    manifest = MANIFESTS[name]
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == kind and manifest["metadata"]["name"]
    spec = dict(cluster_specs())[name]
    assert spec["rayVersion"] == ray.__version__  # the image's Ray is the one rayft pins
    assert spec["authOptions"]["mode"] == "token"
    head = spec["headGroupSpec"]
    assert isinstance(head["rayStartParams"], dict) and head["template"]["spec"]["containers"][0]["name"] == "ray-head"
    assert pod_gpus(head) == 0  # a CPU head
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        assert group["groupName"] and isinstance(group["rayStartParams"], dict)
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert pod_gpus(group) >= 1  # GPU workers
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits == group["template"]["spec"]["containers"][0]["resources"]["requests"]
        instance = group["template"]["spec"]["nodeSelector"]["node.kubernetes.io/instance-type"]
        assert pod_gpus(group) == GPUS_PER_INSTANCE[instance]
    if kind == "RayJob":
        assert manifest["spec"]["shutdownAfterJobFinishes"] is True
    if kind != "RayService":  # drivers on the head keep the registry on its own volume
        mounts = {m["mountPath"]: m["name"] for m in head["template"]["spec"]["containers"][0]["volumeMounts"]}
        env = {e["name"]: e["value"] for e in head["template"]["spec"]["containers"][0]["env"]}
        assert mounts[env["RAYFT_HOME"]] == "rayft-home"


def test_one_image_everywhere_built_from_our_dockerfile():
    import ray
    import tomllib

    images = {c["image"] for _, spec in cluster_specs() for c in containers(spec)} | {LAUNCHER["docker"]["image"]}
    assert len(images) == 1, images
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert images.pop().endswith(f"rayft:{project['project']['version']}-gpu")
    dockerfile = (CLUSTER / "Dockerfile").read_text()
    assert re.search(rf"^FROM rayproject/ray:{re.escape(ray.__version__)}-py311-gpu$", dockerfile, re.M)
    assert f"ray[train,serve,data]=={ray.__version__}" in project["project"]["dependencies"]
    copied = set(re.findall(r"^COPY \S+ (\S+) \1$", dockerfile, re.M))
    stages = {link.readlink().name for link in (ROOT / "rayft").iterdir() if link.is_symlink()}  # rayft.<stage>
    assert stages and copied >= stages | {"rayft"}


def test_gpu_worker_groups_fit_the_cluster_training_config():
    config = load_config(GPU_CONFIG)
    train = config.train
    assert train.use_gpu and train.method in ("lora", "qlora") and train.num_workers == 8
    # A multi-node run keeps runs and exports where every node can reach them.
    assert train.storage_path.startswith("s3://") and train.export_path.startswith("s3://")
    for name, spec in cluster_specs()[:2]:
        groups = spec["workerGroupSpecs"]
        assert sum(g["maxReplicas"] * pod_gpus(g) for g in groups) >= train.num_workers, name
        for g in groups:  # one training worker per GPU, with its CPUs
            cpus = float(g["template"]["spec"]["containers"][0]["resources"]["limits"]["cpu"])
            assert cpus >= pod_gpus(g) * train.cpus_per_worker, name
    job = MANIFESTS["rayjob-train.yaml"]["spec"]["rayClusterSpec"]["workerGroupSpecs"]
    assert sum(g["replicas"] * pod_gpus(g) for g in job) == train.num_workers  # the job's cluster is exact


def test_rayjob_entrypoint_is_a_rayft_command_on_the_mounted_config():
    spec = MANIFESTS["rayjob-train.yaml"]["spec"]
    command = shlex.split(spec["entrypoint"])
    assert command[0] == "rayft"
    args = build_parser().parse_args(command[1:])
    assert args.func is cmd_train
    config = Path(args.config)
    assert str(config.parent) == mounted_config_dir(spec["rayClusterSpec"])
    assert (ROOT / "configs" / config.name).resolve() == GPU_CONFIG  # `kubectl create configmap --from-file`


def test_rayservice_serve_config_is_valid_and_fits_the_workers(tiny_model, tmp_path):
    from ray.serve.schema import ServeDeploySchema

    from rayft.cluster.service import app_builder

    spec = MANIFESTS["rayservice.yaml"]["spec"]
    serve_config = ServeDeploySchema.model_validate(yaml.safe_load(spec["serveConfigV2"]))
    (app,) = serve_config.applications
    assert app.import_path == "rayft.cluster.service:app_builder"
    assert Path(app.args["config"]).parent == Path(mounted_config_dir(spec["rayClusterConfig"]))
    assert (ROOT / "configs" / Path(app.args["config"]).name).resolve() == GPU_CONFIG
    # The builder makes rayft's app; the deployments the manifest tunes are in it.
    config = tmp_path / "serve.yaml"
    config.write_text(yaml.safe_dump({"name": "svc", "model": {"base": tiny_model}}))
    built = app_builder({"config": str(config)})
    ingress = built._bound_deployment
    engine = next(a for a in ingress.init_args if hasattr(a, "_bound_deployment"))._bound_deployment
    overrides = {d.name: d.ray_actor_options.model_dump(exclude_unset=True) for d in app.deployments}
    assert set(overrides) == {ingress.name, engine.name}
    workers = spec["rayClusterConfig"]["workerGroupSpecs"]
    assert min(pod_gpus(g) for g in workers) >= overrides[engine.name]["num_gpus"] >= 1
    # The ingress opens the registry database, so it runs where that lives: the head.
    (resource,) = overrides[ingress.name]["resources"]
    head_resources = json.loads(json.loads(spec["rayClusterConfig"]["headGroupSpec"]["rayStartParams"]["resources"]))
    assert head_resources[resource] >= 1


def test_launcher_config_passes_ray_schema_and_fits_the_config():
    import jsonschema
    import ray.autoscaler

    schema = json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())
    jsonschema.validate(LAUNCHER, schema)
    nodes = LAUNCHER["available_node_types"]
    assert LAUNCHER["head_node_type"] in nodes and not nodes[LAUNCHER["head_node_type"]]["resources"].get("GPU")
    train = load_config(GPU_CONFIG).train
    gpu_nodes = [n for n in nodes.values() if n["resources"].get("GPU")]
    assert sum(n["max_workers"] * n["resources"]["GPU"] for n in gpu_nodes) >= train.num_workers
    for node in gpu_nodes:
        assert node["resources"]["GPU"] == GPUS_PER_INSTANCE[node["node_config"]["InstanceType"]]
        assert node["resources"]["CPU"] >= node["resources"]["GPU"] * train.cpus_per_worker
    assert "/etc/rayft/cluster-gpu.yaml" in LAUNCHER["file_mounts"]
    assert "-e RAY_AUTH_MODE=token" in LAUNCHER["docker"]["run_options"]


# ---------------------------------------------------------------- submission pieces (no Ray started)


def test_staged_upload_carries_the_config_and_skips_state(tmp_path, monkeypatch):
    from rayft.cluster.submit import JOB_FOLDER, staged_working_dir

    work = tmp_path / "project"
    (work / "data").mkdir(parents=True)
    (work / "data" / "in.jsonl").write_text("{}\n")
    for skipped in (".git", ".venv", "my-home"):
        (work / skipped).mkdir()
    monkeypatch.setenv("RAYFT_HOME", str(work / "my-home"))
    config = tmp_path / "elsewhere.yaml"
    config.write_text("name: x\n")
    with staged_working_dir(work, config) as (upload, config_in_job):
        assert sorted(p.name for p in upload.iterdir()) == [JOB_FOLDER, "data"]
        assert (upload / "data" / "in.jsonl").read_text() == "{}\n"
        assert (upload / config_in_job).read_text() == "name: x\n" and config_in_job == f"{JOB_FOLDER}/elsewhere.yaml"
    assert not upload.exists()


def test_addresses_tokens_and_env_options(tmp_path, monkeypatch):
    from rayft.cluster.client import ClusterError, auth_headers, resolve_address
    from rayft.cluster.submit import parse_env, stage_entrypoint
    from rayft.config import ConfigError

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert resolve_address(None) == "http://127.0.0.1:8265"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:8265")
    assert resolve_address(None) == "http://10.0.0.5:8265"
    assert resolve_address("https://ray.example.com/") == "https://ray.example.com"
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    assert auth_headers("http://h:8265", "disabled") == {} and auth_headers("http://h:8265", None) == {}
    with pytest.raises(ClusterError, match="uses token authentication and no token was found"):
        auth_headers("http://h:8265", "token")
    (tmp_path / "token").write_text("s3cret\n")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "token"))
    assert auth_headers("http://h:8265", "token") == {"Authorization": "Bearer s3cret"}
    assert parse_env(["A=1", "B=x=y"]) == {"A": "1", "B": "x=y"}
    with pytest.raises(ConfigError, match="--env: expected KEY=VALUE, got 'oops'"):
        parse_env(["oops"])
    assert (
        stage_entrypoint("data", "_rayft_job/c.yaml", "/v/bin/python", [])
        == "/v/bin/python -m rayft.cli --verbose data prepare --config _rayft_job/c.yaml"
    )
    args = build_parser().parse_args(shlex.split(stage_entrypoint("train", "c.yaml", "python", ["--resume"]))[3:])
    assert args.func is cmd_train and args.resume and args.verbose
    commands = {"data": cmd_data_prepare, "train": cmd_train, "eval": cmd_eval, "serve": cmd_serve}
    for stage, command in commands.items():  # every stage's job runs the CLI command of that stage
        args = build_parser().parse_args(shlex.split(stage_entrypoint(stage, "c.yaml", "python", []))[3:])
        assert args.func is command and "c.yaml" in (getattr(args, "config", None), getattr(args, "target", None))
    quantize = ["tiny:1", "--scheme", "w8a8"]  # rayft submit quantize c.yaml -- tiny:1 --scheme w8a8
    args = build_parser().parse_args(shlex.split(stage_entrypoint("quantize", "c.yaml", "python", quantize))[3:])
    assert (args.func, args.config, args.ref, args.scheme, args.method) == (
        cmd_quantize,
        "c.yaml",
        "tiny:1",
        "w8a8",
        "gptq",
    )


def test_submit_fails_before_sending_on_a_bad_config(tmp_path, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("name: x\nmodel: {base: m}\ntrain: {num_workers: 0}\n")
    assert main(["submit", "--address", "http://127.0.0.1:9", "train", str(config)]) == 2
    assert "train.num_workers" in capsys.readouterr().err


# ---------------------------------------------------------------- jobs on a real `ray start --head`


def job_id_from(output: str) -> str:
    return re.search(r"^submitted (\S+) to ", output, re.M).group(1)


def write_config_file(path: Path, data: dict) -> Path:
    from conftest import write_config

    path.parent.mkdir(parents=True, exist_ok=True)
    return write_config(path, data)


def write_job_config(folder: Path, name: str, base: str, dataset: Path, **train) -> Path:
    """The small LoRA run of conftest (2 workers at 0.5 CPU) as a config file in `folder`."""
    from conftest import lora_train_config

    return write_config_file(folder / f"{name}.yaml", lora_train_config(base, dataset, name, **train))


def ask_head(head, method: str, job_id: str):
    """A Jobs API call through rayft's client (with the token when the head wants one)."""
    from rayft.cluster.client import Cluster

    return Cluster(head.address).call(method, job_id)


def wait_for_log_line(head, job_id: str, text: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while text not in (log := ask_head(head, "get_job_logs", job_id)):
        assert time.monotonic() < deadline, f"{text!r} not in the log of {job_id}:\n{log}"
        time.sleep(0.5)


@pytest.mark.ray
@pytest.mark.timeout(120)
def test_token_auth_head_runs_a_job_that_stop_ends_and_only_its_head_is_stopped(
    tiny_model, tickets_dataset, tmp_path, monkeypatch, capsys
):
    from ray.job_submission import JobSubmissionClient
    from ray_head import head_processes, running_head

    token = tmp_path / "token"
    token.write_text("rayft-test-token-0123456789abcdef")
    monkeypatch.setenv("HOME", str(tmp_path))  # never read or write the real ~/.ray/auth_token
    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    monkeypatch.delenv("RAY_AUTH_TOKEN_PATH", raising=False)
    # A bystander named like a Ray process: `ray stop` or `pkill -f raylet` would end it too.
    bystander = subprocess.Popen(["bash", "-c", "exec -a /opt/fake/raylet sleep 300"])
    config = write_job_config(tmp_path / "work", "long", tiny_model, tickets_dataset, max_steps=10_000)
    try:
        with running_head(env={"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token.read_text()}) as head:
            with pytest.raises(Exception, match="Unauthorized: Missing authentication token"):  # auth is on
                JobSubmissionClient(head.address).list_jobs()
            assert main(["jobs", "list", "--address", head.address]) == 2
            assert "uses token authentication and no token was found" in capsys.readouterr().err
            monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token))
            assert (
                main(
                    [
                        "submit",
                        "--address",
                        head.address,
                        "--working-dir",
                        str(tmp_path / "work"),
                        "--env",
                        f"RAYFT_HOME={tmp_path / 'home'}",
                        "train",
                        str(config),
                    ]
                )
                == 0
            )
            job_id = job_id_from(capsys.readouterr().out)
            # The driver joined the token cluster (with the cluster's RAY_AUTH_MODE) and ran Ray Data.
            wait_for_log_line(head, job_id, "[rayft] run long-", timeout_s=60)
            assert ask_head(head, "get_job_status", job_id).value == "RUNNING"
            assert main(["jobs", "stop", job_id, "--address", head.address]) == 0
            assert f"job {job_id} STOPPED" in capsys.readouterr().out
            assert main(["jobs", "status", job_id, "--address", head.address]) == 3
            ours = head_processes(head)
            assert ours and bystander.pid not in {p.pid for p in ours}
        assert not head_processes(head), "processes of the stopped head are left"
        assert bystander.poll() is None, "stopping the head ended a process it did not start"
        assert not (tmp_path / ".ray" / "auth_token").exists()
    finally:
        bystander.kill()


@pytest.fixture(scope="module")
def ray_head(tickets_dataset, tiny_model):
    """A head without token auth for this module's jobs (the dataset is prepared before it starts,
    by the session's in-process Ray, which the head replaces)."""
    from ray_head import head_processes, running_head

    with running_head() as head:
        yield head
    assert not head_processes(head), "processes of the stopped head are left"
    assert "RAY_ADDRESS" not in os.environ


@pytest.mark.ray
@pytest.mark.timeout(60)
def test_a_failing_job_reports_failed_with_its_error(ray_head, tiny_model, tmp_path, capsys):
    config = write_job_config(tmp_path / "work", "no-data", tiny_model, tmp_path / "missing")
    code = main(
        [
            "submit",
            "--address",
            ray_head.address,
            "--working-dir",
            str(tmp_path / "work"),
            "--env",
            f"RAYFT_HOME={tmp_path / 'home'}",
            "--follow",
            "train",
            str(config),
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    job_id = job_id_from(captured.out)
    assert f"job {job_id} FAILED: Job entrypoint command failed with exit code 2" in captured.err
    assert main(["jobs", "status", job_id, "--address", ray_head.address]) == 1
    err = capsys.readouterr().err
    assert "train.dataset: no prepared dataset at" in err and str(tmp_path / "missing") in err
    assert main(["jobs", "logs", "rayft-train-nope-0", "--address", ray_head.address]) == 2
    assert "rayft-train-nope-0 does not exist" in capsys.readouterr().err


@pytest.mark.ray
@pytest.mark.timeout(180)
def test_training_job_followed_to_succeeded_registers_its_adapter(
    ray_head, tiny_model, tickets_dataset, tmp_path, capsys
):
    from rayft.registry import Registry

    home = tmp_path / "job-home"
    # The prepared dataset travels in the uploaded working directory; the config names it relatively.
    # Runs and exports go to object storage, as on a multi-node cluster (file:// takes the same
    # pyarrow filesystem path as s3:// and gs://).
    shutil.copytree(tickets_dataset, tmp_path / "work" / "tickets")
    bucket = f"file://{tmp_path / 'bucket'}"
    config = write_job_config(
        tmp_path / "work",
        "support-cluster",
        tiny_model,
        Path("tickets"),
        max_steps=4,
        eval_every=4,
        checkpoint_every=4,
        storage_path=f"{bucket}/runs",
        export_path=f"{bucket}/models",
    )
    assert (
        main(
            [
                "submit",
                "--address",
                ray_head.address,
                "--working-dir",
                str(tmp_path / "work"),
                "--env",
                f"RAYFT_HOME={home}",
                "train",
                str(config),
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    job_id = job_id_from(out)
    assert f"rayft jobs logs {job_id} --follow --address {ray_head.address}" in out
    assert f"{sys.executable} -m rayft.cli --verbose train _rayft_job/support-cluster.yaml" in out
    assert main(["jobs", "logs", job_id, "--follow", "--address", ray_head.address]) == 0
    streamed = capsys.readouterr().out
    assert "[rayft] run support-cluster-" in streamed and "registered support-cluster:1 (adapter)" in streamed
    assert streamed.rstrip().endswith(f"job {job_id} SUCCEEDED")
    version = Registry(home / "registry.db").get("support-cluster")
    assert version.kind == "adapter" and version.metrics["steps"] == 4
    assert version.artifact_uri.startswith(f"{bucket}/models/support-cluster/")
    assert storage.exists(storage.join(version.artifact_uri, "adapter_model.safetensors"))
    run_dir = version.metrics["run_dir"]
    assert run_dir.startswith(f"{bucket}/runs/support-cluster/")
    assert storage.exists(storage.join(run_dir, "step_000004", "train_state.json"))  # the checkpoint
    assert storage.exists(storage.join(run_dir, "metrics.jsonl")) and storage.exists(storage.join(run_dir, "loss.png"))
    manifest = json.loads((tickets_dataset / "manifest.json").read_text())
    assert version.dataset_hash == manifest["dataset_hash"]
    assert main(["jobs", "status", job_id, "--address", ray_head.address]) == 0
    assert f"job {job_id} SUCCEEDED" in capsys.readouterr().out
    assert main(["jobs", "list", "--json", "--address", ray_head.address]) == 0
    listed = {j["job_id"]: j for j in json.loads(capsys.readouterr().out)}
    assert listed[job_id]["status"] == "SUCCEEDED" and listed[job_id]["stage"] == "train"


def test_serving_manifests_take_keys_from_secrets_and_the_app_refuses_to_start_without(
    tiny_model, tmp_path, monkeypatch
):
    from rayft.cluster.service import app_builder
    from rayft.config import ConfigError

    head = MANIFESTS["rayservice.yaml"]["spec"]["rayClusterConfig"]["headGroupSpec"]["template"]["spec"]
    env = {e["name"]: e for e in head["containers"][0]["env"]}
    for name in ("RAYFT_API_KEYS", "RAYFT_ADMIN_KEYS"):
        assert env[name]["valueFrom"]["secretKeyRef"]["name"] == "rayft-serve-keys"
    run = LAUNCHER["docker"]["run_options"]
    for name, path in (
        ("RAYFT_API_KEYS_FILE", "/home/ray/.rayft/api-keys"),
        ("RAYFT_ADMIN_KEYS_FILE", "/home/ray/.rayft/admin-keys"),
    ):
        assert f"-e {name}={path}" in run and path in LAUNCHER["file_mounts"]
    served = load_config(GPU_CONFIG).serve
    assert served.host == "0.0.0.0" and not served.api_keys and not served.allow_unauthenticated
    config = tmp_path / "serve.yaml"  # the manifests' serve section, on the tiny base
    config.write_text(
        yaml.safe_dump(
            {
                "name": "svc",
                "model": {"base": tiny_model},
                "serve": served.model_dump(include={"host", "port", "max_model_len"}),
            }
        )
    )
    for name in ("RAYFT_API_KEYS", "RAYFT_API_KEYS_FILE"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ConfigError, match="can be reached from other machines and no API keys"):
        app_builder({"config": str(config)})
    (tmp_path / "api-keys").write_text("k1\nk2\n")
    monkeypatch.setenv("RAYFT_API_KEYS_FILE", str(tmp_path / "api-keys"))
    from rayft.serving.auth import KeyCheck

    ingress = app_builder({"config": str(config)})._bound_deployment
    keys = next(a for a in ingress.init_args if isinstance(a, KeyCheck))
    assert keys.api_keys == {"k1", "k2"}


def gcs_group(state: str, *, job: str, actor: str | None, detached: bool = False):
    """A placement group as the GCS records it (the protobuf the sweep reads)."""
    from ray.core.generated import gcs_pb2

    row = gcs_pb2.PlacementGroupTableData(
        placement_group_id=os.urandom(18),
        state=gcs_pb2.PlacementGroupTableData.PlacementGroupState.Value(state),
        creator_job_id=bytes.fromhex(job),
        creator_actor_id=bytes.fromhex(actor) if actor else b"\xff" * 16,
        is_detached=detached,
    )
    row.bundles.add().unit_resources["CPU"] = 1.0
    return row


def test_only_groups_whose_creator_job_and_actor_are_gone_are_leftovers():
    from rayft.leftovers import group_of, leftovers

    ended, running, controller, detached_owner = "06000000", "07000000", "ab" * 16, "cd" * 16
    rows = {
        "train run stopped mid-start": gcs_group("CREATED", job=ended, actor=controller),
        "made by the ended driver": gcs_group("PENDING", job=ended, actor=None),
        "a live detached actor's": gcs_group("CREATED", job=ended, actor=detached_owner),
        "a running job's": gcs_group("CREATED", job=running, actor=controller),
        "detached (Serve's)": gcs_group("CREATED", job=ended, actor=controller, detached=True),
        "already removed": gcs_group("REMOVED", job=ended, actor=controller),
    }
    groups = {name: group_of(row) for name, row in rows.items()}
    assert (
        groups["train run stopped mid-start"].cpus == 1.0 and groups["made by the ended driver"].creator_actor is None
    )
    found = leftovers(list(groups.values()), dead_jobs={ended}, live_actors={detached_owner})
    assert {name for name, group in groups.items() if group in found} == {
        "train run stopped mid-start",
        "made by the ended driver",
    }


LIVE_GROUPS = """
import ray
from ray.util.placement_group import placement_group
ray.init(namespace="leftovers")
ray.get(placement_group([{"CPU": 0.25}], lifetime="detached", name="kept-detached").ready())
@ray.remote(num_cpus=0)
class Owner:
    def reserve(self):
        return ray.get(placement_group([{"CPU": 0.25}], name="kept-owned").ready()) is not None
owner = Owner.options(name="owner", lifetime="detached").remote()
assert ray.get(owner.reserve.remote())
ray.get(placement_group([{"CPU": 0.25}], name="ends-with-the-job").ready())
"""


@pytest.mark.ray
@pytest.mark.timeout(90)
def test_a_stage_connecting_to_a_cluster_keeps_the_placement_groups_someone_still_holds(ray_head, tmp_path):
    """On a real head: a detached group and a live detached actor's group outlive their job and
    stay; the sweep a stage runs when it connects (`ensure_ray`) removes neither."""
    from ray.job_submission import JobSubmissionClient

    jobs = JobSubmissionClient(ray_head.address)
    job = jobs.submit_job(entrypoint=f"{sys.executable} -c {shlex.quote(LIVE_GROUPS)}")
    deadline = time.monotonic() + 60
    while str(jobs.get_job_status(job)) not in ("SUCCEEDED", "FAILED", "STOPPED") and time.monotonic() < deadline:
        time.sleep(0.5)
    assert str(jobs.get_job_status(job)) == "SUCCEEDED", jobs.get_job_logs(job)
    connect = (  # a stage's connection, counting what its sweep frees; then the test's groups go
        "import ray, rayft.leftovers as sweep; from rayft.runtime import ensure_ray\n"
        "from ray.util.placement_group import PlacementGroup\n"
        "freed = []; free = sweep.free_leftover_placement_groups\n"
        "sweep.free_leftover_placement_groups = lambda: freed.extend(free()) or freed\n"
        "ensure_ray()\n"
        "alive = {g['name']: i for i, g in ray.util.placement_group_table().items() if g['state'] != 'REMOVED'}\n"
        "print('freed', len(freed), 'alive', *sorted(alive))\n"
        "ray.kill(ray.get_actor('owner', namespace='leftovers'))\n"
        "ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(alive['kept-detached'])))\n"
    )
    env = {**os.environ, "RAY_ADDRESS": f"127.0.0.1:{ray_head.ports['--port']}"}
    out = subprocess.run([sys.executable, "-c", connect], env=env, capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["freed", "0", "alive", "kept-detached", "kept-owned"], out.stderr[-2000:]


def test_an_actor_in_a_placement_group_holds_its_bundles_cpus():
    """As the state API lists a Ray Train worker: its CPUs are its group's, named by the group."""
    from rayft.cluster.waiting import holds_resources

    group = "5536e632a127d716993633fb2f7501000000"
    assert holds_resources({f"bundle_group_{group}": 0.001, f"CPU_group_{group}": 0.5})
    assert holds_resources({"CPU": 1.0}) and holds_resources({"GPU_group_0_" + group: 1.0})
    assert not holds_resources({f"bundle_group_{group}": 0.001}) and not holds_resources({"CPU": 0.0, "memory": 1e9})


def test_an_actor_being_created_in_its_own_process_holds_its_resources():
    """As the state API lists an actor: PENDING_CREATION with a pid while its process starts or its
    `__init__` runs, with pid 0 while it waits for resources."""
    from rayft.cluster.waiting import started

    assert started({"state": "ALIVE", "pid": 12}) and started({"state": "PENDING_CREATION", "pid": 20355})
    assert not started({"state": "PENDING_CREATION", "pid": 0}) and not started({"state": "PENDING_CREATION"})
    assert not started({"state": "DEAD", "pid": 20355})


def test_work_the_scheduler_does_not_hold_back_is_launching():
    """Work the state API shows waiting but the scheduler does not queue has its resources, its
    process launching: the job is not stuck then."""
    from rayft.cluster.waiting import Demand, launching

    task = Demand("task work", 1, {"CPU": 1.0, "memory": 2e9})
    assert not launching([task], {False: [{"CPU": 2.0}, {"CPU": 1.0}], True: []})
    assert launching([task], {False: [{"CPU": 2.0}], True: []})
    assert not launching([task], {False: None, True: None})  # None: the scheduler could not be asked
    # five wait, one is held back: the other four have their CPUs, their workers launching
    five = Demand("task work", 5, {"CPU": 1.0})
    assert launching([five], {False: [{"CPU": 1.0}], True: []})
    assert not launching([five], {False: [{"CPU": 1.0}] * 5, True: []})
    # an actor granted every CPU, its process launching, and a task queued behind it
    engine = Demand("actor Engine", 1, {"CPU": 4.0})
    assert launching([task, engine], {False: [{"CPU": 1.0}], True: []})
    assert not launching([task, engine], {False: [{"CPU": 1.0}, {"CPU": 4.0}], True: []})
    group = Demand("placement group of 2 bundles (all of it)", 1, {"CPU": 2.0})
    assert not launching([group], {False: [], True: [{"CPU": 2.0, "GPU": 0.0}]})
    assert launching([group], {False: [{"CPU": 2.0}], True: []})


STAGE_WAIT_S = 2  # the shortest `stage_wait_s` the tests' fine-tuning services use (the default: 5)
SLOW_STARTS = """
import time, ray
def slow_start():
    time.sleep(5)
ray.init(runtime_env={"worker_process_setup_hook": slow_start})
cpus = int(ray.cluster_resources()["CPU"])
@ray.remote(num_cpus=1)
def work():
    time.sleep(1)
ray.get([work.remote() for _ in range(cpus + 1)])  # one more task than CPUs, their workers slow to start
@ray.remote(num_cpus=cpus)
class Engine:  # every CPU, and an __init__ that takes seconds, as an eval stage's vLLM engine's
    def __init__(self):
        time.sleep(5)
engine = Engine.remote()
time.sleep(1)
queued = work.remote()
ray.get(engine.__ray_ready__.remote())
ray.kill(engine)
ray.get(queued)
"""


@pytest.mark.ray
@pytest.mark.timeout(90)
def test_work_starting_its_processes_does_not_make_its_job_stuck(ray_head):
    """While the worker processes of as many tasks as the head has CPUs start slowly (as on a loaded
    machine), and then while an actor holding every CPU runs its long `__init__`, a task queued
    behind them waits for a CPU; yet the job is busy, not stuck: it never reads stuck on every look
    for as long as the fine-tuning service waits before it reports a stage waiting for resources
    (one look may misjudge work changing state: Ray reports its state, free resources and queue
    each on its own period)."""
    import ray
    from ray.job_submission import JobSubmissionClient

    from rayft.cluster.client import Cluster
    from rayft.cluster.waiting import cluster_resources, state_list, stuck

    cluster, jobs = Cluster(ray_head.address), JobSubmissionClient(ray_head.address)
    ray.init(address=f"127.0.0.1:{ray_head.ports['--port']}", logging_level="ERROR")  # as the service is
    job = jobs.submit_job(entrypoint=f"{sys.executable} -c {shlex.quote(SLOW_STARTS)}")
    looks, said = [], []  # the job's task states and actors' (state, has a process), and `stuck`, at each look
    deadline = time.monotonic() + 75
    try:
        while str(jobs.get_job_status(job)) in ("PENDING", "RUNNING") and time.monotonic() < deadline:
            job_id = jobs.get_job_info(job).job_id
            if job_id:
                in_job = [("job_id", "=", job_id)]
                tasks = {t["state"] for t in state_list(cluster, "tasks", in_job) if t["type"] == "NORMAL_TASK"}
                actors = {(a["state"], bool(a.get("pid"))) for a in state_list(cluster, "actors", in_job)}
                free = cluster_resources()[0]
                looks.append((tasks, actors, free.get("CPU", 0)))
                said.append((time.monotonic(), stuck(cluster, job)))
            time.sleep(0.25)
    finally:
        ray.shutdown()
        jobs.stop_job(job)
    assert str(jobs.get_job_status(job)) == "SUCCEEDED", jobs.get_job_logs(job)[-2000:]
    queued = [(tasks, actors) for tasks, actors, free in looks if "PENDING_NODE_ASSIGNMENT" in tasks and not free]
    assert any("SUBMITTED_TO_WORKER" in tasks for tasks, _ in queued), f"no worker seen starting: {looks}"
    assert any(("PENDING_CREATION", True) in actors for _, actors in queued), f"no actor seen starting: {looks}"
    longest, since = 0.0, None  # the longest time read stuck on every look
    for moment, judged in said:
        since = (since or moment) if judged else None
        longest = max(longest, moment - since) if since else longest
    seen = [judged for _, judged in said if judged]
    assert longest < STAGE_WAIT_S, f"read stuck for {longest:.1f} s while its work started: {seen}; {looks}"
