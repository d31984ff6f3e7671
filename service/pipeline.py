"""A fine-tuning job's stages and what each leaves behind.

validate  (in the runner) every record of the uploaded files checked as data prepare checks them,
          tokens counted with the base's tokenizer and template, the run estimated
data      `rayft data prepare` as a Ray job → the dataset's manifest (counts, rejects by reason)
train     `rayft train` as a Ray job → step metrics while it runs, then the registered version
eval      `rayft eval --model <version>` as a Ray job → the report, with the gate's verdict
gate      (in the runner) promotion to `metadata.promote_to` when the gate passes

Each Ray stage runs with a config written for the job (`job_config`): the server's own `data`,
`train` and `eval` sections as the template, the job's files, method (supervised or DPO),
hyperparameters, seed, adaptation and starting version (`train.init_from`) over them, and a
registry name per project and suffix (`ft-<project>-<suffix>`), owned by the job's project, so the
jobs of one suffix are versions of one model and an alias on it compares each new one with the one
it would replace. The train stage also registers the last `EPOCH_CHECKPOINTS` epochs' end states
(`job_versions` tells them from the final model) and keeps its runs in a folder of the job's own,
so `rayft train --resume` (a resumed or lost stage) continues this job's run and no other.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

import yaml

from rayft import storage
from rayft.config import ModelConfig, RayftConfig, ServeConfig
from rayft.data.manifest import MANIFEST, Manifest
from rayft.plan import auto_learning_rate
from rayft.registry import ModelVersion, Registry
from rayft.service.objects import Checkpoint, Job

RAY_STAGES = ("data", "train", "eval")
STEP_LOG = "metrics.jsonl"  # rank 0's live step log (training/run_log.py)
EPOCH_CHECKPOINTS = 3  # epochs' end states registered per job, as OpenAI keeps its last three
CHECKPOINT_ALIAS = re.compile(r"ckpt-step-([0-9]+)")  # what the trainer names an epoch's end state


@dataclass(frozen=True)
class ServicePaths:
    """Where the service keeps things, resolved once in the `rayft serve` process (a Serve replica
    may run with another working directory and environment)."""

    home: str  # RAYFT_HOME of the jobs
    registry: str
    files: str
    jobs: str

    def job_folder(self, job: Job) -> Path:
        return Path(self.jobs) / job.id

    def dataset(self, job: Job) -> Path:
        return self.job_folder(job) / "dataset"

    def config(self, job: Job) -> Path:
        return self.job_folder(job) / "config.yaml"


def job_config(server: RayftConfig, job: Job, inputs: list[str], paths: ServicePaths) -> RayftConfig:
    """The config every stage of `job` runs with."""
    hyper = job.hyperparameters
    train = {
        "method": job.adaptation,
        "seed": job.seed,
        "dataset": None,
        "init_from": job.init_from,
        "epoch_checkpoints": EPOCH_CHECKPOINTS,
        "storage_path": runs_folder(server, job, paths),
    }
    if job.method == "dpo":
        beta = {} if hyper.beta in (None, "auto") else {"beta": hyper.beta}
        train |= {"method": "dpo", "dpo": server.train.dpo.model_copy(update={"tune": job.adaptation} | beta)}
    if hyper.n_epochs != "auto":
        train["epochs"] = hyper.n_epochs
    if hyper.batch_size != "auto":
        train["batch_size"] = hyper.batch_size
    chosen = server.train.model_copy(update=train)
    if hyper.learning_rate_multiplier != "auto":  # times the method's own starting point
        chosen.learning_rate = auto_learning_rate(chosen) * hyper.learning_rate_multiplier
    return RayftConfig(
        name=job.name,
        project=job.project,
        model=ModelConfig(base=server.model.base, chat_template=server.model.chat_template),
        data=server.data.model_copy(update={"inputs": inputs, "out": str(paths.dataset(job)), "seed": job.seed}),
        train=chosen,
        eval=server.eval,
        serve=ServeConfig(max_model_len=server.serve.max_model_len, max_lora_rank=server.serve.max_lora_rank),
    )


def runs_folder(server: RayftConfig, job: Job, paths: ServicePaths) -> str:
    """The job's own runs folder: under the server's `train.storage_path` (default
    `$RAYFT_HOME/runs`), one folder per job."""
    return storage.join(server.train.storage_path or str(Path(paths.home) / "runs"), job.id)


def run_begun(server: RayftConfig, job: Job, paths: ServicePaths) -> bool:
    """Whether the job's train stage has begun its run (`rayft train --resume` has one to continue)."""
    runs = storage.join(runs_folder(server, job, paths), job.name)
    return storage.exists(runs) and bool(storage.list_dirs(runs))


def write_config(config: RayftConfig, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(config.model_dump(mode="json", exclude_defaults=True), sort_keys=False))


def manifest_of(job: Job, paths: ServicePaths) -> Manifest:
    return Manifest.model_validate_json(storage.read_text(str(paths.dataset(job) / MANIFEST)))


def rejects_file(job: Job, paths: ServicePaths) -> Path | None:
    found = paths.dataset(job) / "rejects.jsonl"
    return found if found.is_file() and found.stat().st_size else None


def live_steps(job: Job, paths: ServicePaths) -> list[dict]:
    """The step records the running train stage has logged so far (rank 0's log on this machine's
    disk; empty where it runs elsewhere: the registered version's log is read when it ends)."""
    logs = sorted(
        Path(paths.home, "scratch").glob(f"{job.name}-*/log-rank0/{STEP_LOG}"), key=lambda p: p.stat().st_mtime
    )
    return read_steps(logs[-1].read_text()) if logs and logs[-1].stat().st_mtime >= (job.started_at or 0) else []


def read_steps(text: str) -> list[dict]:
    steps = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line being written
            continue
        if "step" in record and "loss" in record:
            steps.append(record)
    return steps


def step_event(record: dict, total: int | None) -> tuple[str, dict]:
    """OpenAI's metrics event for one step: message and data."""
    data = {"step": record["step"], "train_loss": record["loss"], "total_steps": total}
    message = f"Step {record['step']}/{total or '?'}: training loss={record['loss']:.4f}"
    if record.get("val_loss") is not None:
        data["valid_loss"] = record["val_loss"]
        message += f", validation loss={record['val_loss']:.4f}"
    return message, data


def steps_csv(steps: list[dict]) -> str:
    """The step metrics (metrics events' data) as OpenAI's result file has them."""
    lines = ["step,train_loss,valid_loss"]
    lines += [f"{s['step']},{s['train_loss']},{s.get('valid_loss', '')}" for s in steps]
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class JobVersions:
    """What a job's train stage registered: the final model, and its epochs' end states."""

    final: ModelVersion | None
    checkpoints: list[tuple[int, ModelVersion]]  # (step, version), the latest step first


def job_versions(registry: Registry, job: Job, paths: ServicePaths) -> JobVersions:
    """The versions of the job's name trained on the job's own dataset. An epoch's end state is a
    version a `ckpt-step-<step>` alias of the name pointed to (the alias may since have moved to a
    later job's version: its history says); it is a version of its own, carrying its `epoch`, or the
    final model itself when that was exported from the same state. A step registered twice (a run
    resumed while it registered) counts once, by its latest version."""
    dataset = str(paths.dataset(job))
    mine = {v.version: v for v in registry.list(job.name) if (v.config.get("data") or {}).get("out") == dataset}
    finals = [v for v in mine.values() if "epoch" not in v.metrics]
    steps: dict[int, ModelVersion] = {}
    for change in registry.history(job.name):  # oldest first
        named = CHECKPOINT_ALIAS.fullmatch(change.alias)
        for number in change.targets if named else ():
            if number in mine:
                steps[int(named[1])] = mine[number]
    return JobVersions(finals[-1] if finals else None, [(step, steps[step]) for step in sorted(steps, reverse=True)])


def checkpoint_of(job: Job, step: int, version: ModelVersion, step_metrics: dict) -> Checkpoint:
    """An epoch's end state as the job's checkpoint, served by its exact ref, with the losses the
    job's metrics event of that step recorded (`step_event`)."""
    return Checkpoint(
        job_id=job.id,
        model=version.ref,
        step=step,
        created_at=int(version.created_at),
        train_loss=finite(step_metrics.get("train_loss")),
        valid_loss=finite(step_metrics.get("valid_loss")),
    )


def finite(value) -> float | None:
    """A loss as a number JSON can carry (None for a missing or NaN one)."""
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None
