"""`rayft submit STAGE CONFIG`: run one stage as a Ray job on a cluster.

setup   validate the config here (a bad field fails before anything is sent), connect to the Jobs
        API (token auth when the cluster uses it), stage the working directory with the config
run     submit `<python> -m rayft.cli <stage> <config>` with a runtime environment that uploads the
        working directory and sets the job's environment (RAY_AUTH_MODE as the cluster runs,
        RAYFT_HOME, unbuffered output, and any --env)
report  the job id and the commands that follow, inspect and stop it
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
import uuid
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from rayft.cluster.client import Cluster, ClusterError, resolve_address
from rayft.config import ConfigError, load_config
from rayft.home import rayft_home

# Each stage's command line after `rayft`; the config path follows.
STAGE_COMMANDS = {
    "data": ["data", "prepare", "--config"],
    "train": ["train"],
    "quantize": ["quantize", "--config"],  # rayft submit quantize C.yaml -- NAME:VERSION --scheme w8a8
    "eval": ["eval"],
    "serve": ["serve"],
}
# Never uploaded: environments, VCS data and rayft's own state (datasets, runs, models).
SKIPPED_NAMES = {".git", ".venv", "venv", ".rayft", "__pycache__", ".mypy_cache", ".pytest_cache", "node_modules"}
# Folder inside the uploaded working directory that carries the job's config.
JOB_FOLDER = "_rayft_job"


@dataclass
class Submission:
    """A submitted job and where it runs."""

    job_id: str
    cluster: Cluster
    stage: str
    entrypoint: str
    env: dict[str, str] = field(default_factory=dict)


def parse_env(pairs: list[str]) -> dict[str, str]:
    """`KEY=VALUE` strings from `--env` as a mapping."""
    env = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"--env: expected KEY=VALUE, got {pair!r}")
        env[key] = value
    return env


def job_environment(cluster: Cluster, overrides: dict[str, str]) -> dict[str, str]:
    """The job's environment variables.

    RAY_AUTH_MODE follows the cluster, so the job's driver joins it with (or without) its token even
    though rayft defaults to `disabled`. RAYFT_HOME is this machine's for a local head (same disk);
    a remote cluster keeps its own (set it in the cluster image or manifest), unless --env says.
    """
    env = {"PYTHONUNBUFFERED": "1"}
    if cluster.auth_mode in ("token", "disabled"):
        env["RAY_AUTH_MODE"] = cluster.auth_mode
    if cluster.local:
        env["RAYFT_HOME"] = str(rayft_home())
    return env | overrides


@contextmanager
def staged_working_dir(working_dir: Path, config_path: Path):
    """A folder to upload: links to everything in `working_dir` (less SKIPPED_NAMES and RAYFT_HOME)
    plus a copy of the config; yields the folder and the config's path inside it."""
    home = rayft_home()
    with tempfile.TemporaryDirectory(prefix="rayft-submit-") as scratch:
        stage = Path(scratch)
        for entry in sorted(working_dir.iterdir()):
            if entry.name in SKIPPED_NAMES or entry.name == JOB_FOLDER or entry.resolve() == home:
                continue
            (stage / entry.name).symlink_to(entry.resolve(), target_is_directory=entry.is_dir())
        (stage / JOB_FOLDER).mkdir()
        shutil.copyfile(config_path, stage / JOB_FOLDER / config_path.name)
        yield stage, f"{JOB_FOLDER}/{config_path.name}"


def stage_entrypoint(stage: str, config: str, python: str, extra: list[str]) -> str:
    """The shell command the job runs: verbose, because a job's output already is a log (`rayft jobs logs`)."""
    return shlex.join([python, "-m", "rayft.cli", "--verbose", *STAGE_COMMANDS[stage], config, *extra])


def submit_stage(
    stage: str,
    config_path: str,
    *,
    address: str | None = None,
    working_dir: str = ".",
    env: dict[str, str] | None = None,
    python: str | None = None,
    extra: list[str] | None = None,
) -> Submission:
    """Submit `rayft <stage> <config>` as a Ray job; returns once the job is accepted."""
    from ray.exceptions import RayError

    # setup
    if stage not in STAGE_COMMANDS:
        raise ConfigError(f"submit: unknown stage {stage!r} (choose from {', '.join(STAGE_COMMANDS)})")
    config = load_config(config_path)
    folder = Path(working_dir)
    if not folder.is_dir():
        raise ConfigError(f"--working-dir: {folder} is not a folder")
    cluster = Cluster(address)
    # A local head runs this interpreter; a remote cluster runs its image's `python` (rayft installed there).
    python = python or (sys.executable if cluster.local else "python")
    job_env = job_environment(cluster, env or {})
    job_id = f"rayft-{stage}-{config.name}-{uuid.uuid4().hex[:8]}"

    # run
    with staged_working_dir(folder, Path(config_path)) as (upload, config_in_job):
        entrypoint = stage_entrypoint(stage, config_in_job, python, extra or [])
        runtime_env = {"working_dir": str(upload), "env_vars": job_env}
        try:
            cluster.call(
                "submit_job",
                entrypoint=entrypoint,
                runtime_env=runtime_env,
                submission_id=job_id,
                metadata={"rayft_stage": stage, "rayft_config": config.name},
            )
        except (RayError, ValueError, OSError) as error:  # e.g. the upload is too large or unreadable
            raise ClusterError(f"submitting {stage} to {cluster.address} failed: {error}") from None

    # report
    return Submission(job_id, cluster, stage, entrypoint, job_env)


def print_submission(job: Submission) -> None:
    """The job id and how to follow, inspect and stop it."""
    address = "" if job.cluster.address == resolve_address(None) else f" --address {job.cluster.address}"
    print(f"submitted {job.job_id} to {job.cluster.address}")
    print(f"  runs     {job.entrypoint}")
    if "RAYFT_HOME" in job.env:
        print(f"  home     RAYFT_HOME={job.env['RAYFT_HOME']}")
    print(f"  follow   rayft jobs logs {job.job_id} --follow{address}")
    print(f"  status   rayft jobs status {job.job_id}{address}")
    print(f"  stop     rayft jobs stop {job.job_id}{address}")
    print(f"  browse   {job.cluster.address}/#/jobs/{job.job_id}", flush=True)
