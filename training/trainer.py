"""`rayft train`: fine-tune on Ray Train + DeepSpeed, export, and register the result.

setup   check the config against the model and the data (before any worker starts), tokenize the
        splits on Ray Data, resolve `auto` values and step counts, build the DeepSpeed config
run     a TorchTrainer with N workers; Ray restarts failed workers from the last checkpoint
report  export the best checkpoint (lowest validation loss) as an adapter or a full model, write the
        loss curve, register the version with its lineage
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from rayft.config import ConfigError, RayftConfig
from rayft.home import rayft_home
from rayft.registry import Registry, RegistryError, resolve_model_path
from rayft.runtime import ensure_ray
from rayft.training import report
from rayft.training.data import tokenized_split
from rayft.training.deepspeed_config import deepspeed_config
from rayft.training.export import export_checkpoint
from rayft.training.model import check_target_modules
from rayft.training.plan import PlanError, make_plan
from rayft.training.worker import LOG_NAME, WorkerSpec, train_loop_per_worker

class TrainingError(RuntimeError):
    """A run that failed; the message carries the worker's error."""


def check_config(config: RayftConfig, base: str) -> None:
    """Config problems that need no data: raised before Ray starts."""
    train = config.train
    if train.method == "qlora" and not train.use_gpu:
        raise ConfigError("train.method: qlora quantizes the base to 4 bits with bitsandbytes, which needs a GPU; "
                          "set train.use_gpu: true on a GPU cluster, or use method: lora on CPU")
    if train.method != "full":
        try:
            check_target_modules(base, train.lora)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if not (config.dataset_dir() / "train.parquet").exists():
        raise ConfigError(f"train.dataset: no prepared dataset at {config.dataset_dir()} (run `rayft data prepare`)")


def run_paths(config: RayftConfig, resume: bool) -> tuple[Path, str]:
    """The runs folder for this config's name and the run to start or continue."""
    storage = Path(config.train.storage_path or rayft_home() / "runs" / config.name)
    storage.mkdir(parents=True, exist_ok=True)
    if resume:
        runs = sorted(p.name for p in storage.iterdir() if p.is_dir())
        if not runs:
            raise ConfigError(f"--resume: no earlier run of {config.name!r} in {storage}")
        return storage, runs[-1]
    return storage, f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def build_trainer(config: RayftConfig, base: str, spec: WorkerSpec, datasets: dict, storage: Path, run_name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = config.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config=spec.__dict__,
        scaling_config=ScalingConfig(
            num_workers=train.num_workers, use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker} | ({"GPU": 1} if train.use_gpu else {}),
        ),
        run_config=RunConfig(
            name=run_name, storage_path=str(storage),
            failure_config=FailureConfig(max_failures=2),
            checkpoint_config=CheckpointConfig(
                num_to_keep=train.keep_checkpoints, checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
    )


def best_checkpoint(result):
    """The kept checkpoint with the lowest validation loss (the latest one if none has it)."""
    scored = [(m.get("val_loss"), c) for c, m in result.best_checkpoints if m.get("val_loss") == m.get("val_loss")]
    scored = [(v, c) for v, c in scored if v is not None]
    return min(scored, key=lambda vc: vc[0])[1] if scored else result.checkpoint


def train(config: RayftConfig, resume: bool = False) -> dict:
    """Train `config`, export and register the result; returns the registry entry as a dict."""
    from ray.train import TrainingFailedError
    from transformers import AutoTokenizer

    # setup
    registry = Registry()
    try:
        base, base_ref = resolve_model_path(config.model.base, registry)
    except RegistryError as error:
        raise ConfigError(f"model.base: {error}") from None
    check_config(config, base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    if config.model.chat_template:
        tokenizer.chat_template = config.model.chat_template
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token
    dataset_dir = config.dataset_dir()
    manifest = json.loads((dataset_dir / "manifest.json").read_text()) if (dataset_dir / "manifest.json").exists() else {}
    ensure_ray()
    tokenize = (base, config.model.chat_template, config.train.max_seq_len)
    datasets = {"train": tokenized_split(dataset_dir, "train", *tokenize)}
    n_val = 0
    if (dataset_dir / "val.parquet").exists():
        datasets["val"] = tokenized_split(dataset_dir, "val", *tokenize)
        n_val = datasets["val"].count()
        if n_val == 0:
            del datasets["val"]
    n_train = datasets["train"].count()
    try:
        plan = make_plan(config.train, n_train, n_val, int(datasets["train"].sum("length") or 0) if n_train else 0)
    except PlanError as error:
        raise ConfigError(f"train: {error}") from None
    storage, run_name = run_paths(config, resume)
    spec = WorkerSpec(
        base=base, train=config.train.model_dump(), plan=plan.to_dict(),
        ds_config=deepspeed_config(config.train, plan.micro_batch, config.train.use_gpu),
        pad_id=tokenizer.pad_token_id, scratch_dir=str(rayft_home() / "scratch" / run_name),
        fault_step=int(os.environ["RAYFT_FAULT_STEP"]) if os.environ.get("RAYFT_FAULT_STEP") else None,
        fault_marker=str(rayft_home() / "scratch" / run_name / "fault-injected"),
    )
    Path(spec.scratch_dir).mkdir(parents=True, exist_ok=True)
    print(f"[rayft] run {run_name}: {plan.total_steps} steps ({plan.epochs} epochs × {plan.steps_per_epoch}), "
          f"batch {plan.global_batch} = {plan.micro_batch} × {config.train.num_workers} workers × "
          f"{config.train.grad_accum} accumulation, lr {plan.learning_rate:g}", flush=True)

    # run
    try:
        result = build_trainer(config, base, spec, datasets, storage, run_name).fit()
    except TrainingFailedError as error:
        raise TrainingError(f"training run {run_name} failed: {error}") from error

    # report
    run_dir = storage / run_name
    checkpoint = best_checkpoint(result)
    with checkpoint.as_directory() as directory:
        log = report.read_log(Path(directory) / LOG_NAME)
        exported = export_checkpoint(directory, base, config.train, tokenizer,
                                     rayft_home() / "models" / config.name / run_name)
    latest_log = report.read_log(Path(result.checkpoint.path) / LOG_NAME) or log
    (run_dir / LOG_NAME).write_text("".join(json.dumps(r) + "\n" for r in latest_log))
    report.plot_loss_curve(latest_log, run_dir / "loss.png")
    metrics = report.summarize(latest_log) | {
        "exported_step": log[-1]["step"] if log else None,
        "stopped_early": bool(result.metrics.get("stopped_early")),
        "plan": plan.to_dict(),
    }
    version = registry.register(
        config.name, exported["kind"], base, exported["path"],
        weights_hash=exported["weights_hash"], dataset_hash=manifest.get("dataset_hash"),
        config=config.model_dump(), metrics=metrics | {"run_dir": str(run_dir)}, parent=base_ref,
    )
    return version.to_dict()
