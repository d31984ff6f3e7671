"""`rayft train`: fine-tune on Ray Train + DeepSpeed, export, verify, and register the result.

setup   check the config against the model and the data (before any worker starts), tokenize the
        splits on Ray Data, resolve `auto` values and step counts, build the DeepSpeed config
run     a TorchTrainer with N workers; Ray restarts failed workers from the last checkpoint;
        `--resume` continues the latest run of this config from its last checkpoint
report  export the best checkpoint (lowest validation loss) as an adapter or a full model into a
        folder of its own, check the export against the training weights, write the loss curve,
        register the version with its lineage (base, dataset hash, config, metrics, parent)

Every training attempt exports to a new folder (`<exports>/<name>/<run>/<attempt>`), so a `--resume`
that trains further registers a new version and never touches the files of one already registered.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

from rayft import storage
from rayft.chat import tool_template
from rayft.config import ConfigError, RayftConfig
from rayft.data.manifest import MANIFEST, Manifest
from rayft.home import rayft_home
from rayft.plan import PlanError, TrainPlan, make_plan
from rayft.registry import ModelVersion, Registry, RegistryError, registry_base, verified_artifact
from rayft.runtime import ensure_ray
from rayft.training import report
from rayft.training.continuation import continued_lora, starting_point
from rayft.training.data import load_tokenizer, tokenized_splits
from rayft.training.deepspeed_config import deepspeed_config
from rayft.training.export import export_checkpoint, verify_export
from rayft.training.faults import InjectedFault
from rayft.training.model import check_target_modules
from rayft.training.progress import FollowLog
from rayft.training.reference import with_reference_logps
from rayft.training.run_log import LOG_NAME
from rayft.training.worker import STATE_NAME, WorkerSpec, train_loop_per_worker


class TrainingError(RuntimeError):
    """A run that failed; the message carries the worker's error."""


def check_config(config: RayftConfig, base: str) -> None:
    """Config and data problems found without Ray and without reading a record: raised before any
    work starts."""
    train = config.train
    if train.method == "qlora" and not train.use_gpu:
        raise ConfigError(
            "train.method: qlora quantizes the base to 4 bits with bitsandbytes, which needs a GPU; "
            "set train.use_gpu: true on a GPU cluster, or use method: lora on CPU"
        )
    if train.objective == "dpo" and train.packing:
        raise ConfigError("train.packing: DPO compares whole replies pair by pair; set packing: false")
    if train.adapter and not train.init_from:
        try:
            check_target_modules(base, train.lora)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    if not storage.exists(storage.join(config.dataset_dir(), "train.parquet")):
        raise ConfigError(f"train.dataset: no prepared dataset at {config.dataset_dir()} (run `rayft data prepare`)")
    if not storage.exists(storage.join(config.dataset_dir(), MANIFEST)):
        raise ConfigError(
            f"train.dataset: {config.dataset_dir()} has no {MANIFEST}, so its version is unknown: it was "
            "not written by `rayft data prepare`, or its preparation did not finish"
        )
    if train.objective == "dpo" and dataset_kind(config) != "preference":
        raise ConfigError(
            f"train.method: dpo learns from preference pairs, and {config.dataset_dir()} holds {dataset_kind(config)} "
            "records: prepare a preference file (docs/data.md)"
        )
    check_data_size(config)


def dataset_kind(config: RayftConfig) -> str:
    """What the prepared dataset holds, from its manifest: `sft` records or `preference` pairs."""
    manifest = storage.read_text(storage.join(config.dataset_dir(), MANIFEST))
    return Manifest.model_validate_json(manifest).kind


def split_rows(path: str) -> int:
    """Rows in one prepared split, from its Parquet footer (nothing is read or tokenized)."""
    try:
        return storage.parquet_file(path).metadata.num_rows
    except (OSError, ValueError) as error:  # pyarrow's ArrowInvalid is a ValueError
        raise ConfigError(f"train.dataset: {path} is not a readable Parquet file ({error})") from None


def check_data_size(config: RayftConfig) -> None:
    """Refuse data that cannot train (empty, or smaller than one batch) from the splits' row counts,
    before Ray starts. Tokenizing can only drop rows and truncates each to max_seq_len, so a plan
    that fails on these upper bounds fails on the tokenized data too; the plan is made again on the
    real counts after tokenizing."""
    val = storage.join(config.dataset_dir(), "val.parquet")
    n_train = split_rows(storage.join(config.dataset_dir(), "train.parquet"))
    n_val = split_rows(val) if storage.exists(val) else 0
    plan_or_error(config, n_train, n_val, n_train * config.train.max_seq_len)


def plan_or_error(config: RayftConfig, n_train: int, n_val: int, train_tokens: int) -> TrainPlan:
    try:
        return make_plan(config.train, n_train, n_val, train_tokens)
    except PlanError as error:
        raise ConfigError(f"train: {error}") from None


def run_location(config: RayftConfig, resume: bool) -> tuple[str, str]:
    """The runs folder (local or URI) for this config's name and the run to start or continue."""
    runs = config.train.storage_path or str(rayft_home() / "runs")
    runs = storage.join(runs, config.name)
    if resume:
        earlier = storage.list_dirs(runs)
        if not earlier:
            raise ConfigError(f"--resume: no earlier run of {config.name!r} in {runs}")
        return runs, earlier[-1]
    return runs, f"{config.name}-{time.strftime('%Y%m%d-%H%M%S')}"


def tokenized_datasets(config: RayftConfig, base: str, template: str | None) -> tuple[dict, TrainPlan]:
    """Train (and val, when present) token rows on Ray Data, rendered with `template` (None: the
    base tokenizer's), and the plan they allow; pairs of rows for DPO."""
    dataset_dir = config.dataset_dir()
    splits = ["train"] + (["val"] if storage.exists(storage.join(dataset_dir, "val.parquet")) else [])
    pairs = config.train.objective == "dpo"
    tokens = tokenized_splits(dataset_dir, splits, base, template, config.train.max_seq_len, pairs)
    n_train, n_val = tokens.rows["train"], tokens.rows.get("val", 0)
    datasets = {split: rows for split, rows in tokens.datasets.items() if split == "train" or n_val}
    return datasets, plan_or_error(config, n_train, n_val, tokens.train_tokens)


def build_trainer(config: RayftConfig, spec: WorkerSpec, datasets: dict, runs: str, run_name: str):
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    train = config.train
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"spec": spec},
        scaling_config=ScalingConfig(
            num_workers=train.num_workers,
            use_gpu=train.use_gpu,
            resources_per_worker={"CPU": train.cpus_per_worker} | ({"GPU": 1} if train.use_gpu else {}),
            placement_strategy=train.placement_strategy,
        ),
        run_config=RunConfig(
            name=run_name,
            storage_path=runs,
            failure_config=FailureConfig(max_failures=train.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=None if train.epoch_checkpoints else train.keep_checkpoints,
                checkpoint_score_attribute="val_loss",
                checkpoint_score_order="min",
            ),
        ),
        datasets=datasets,
    )


def best_checkpoint(result):
    """The kept checkpoint with the lowest validation loss (the latest one if none has it)."""
    scored = [
        (m["val_loss"], c)
        for c, m in result.best_checkpoints
        if isinstance(m.get("val_loss"), float) and m["val_loss"] == m["val_loss"]
    ]
    return min(scored, key=lambda vc: vc[0])[1] if scored else result.checkpoint


def export_location(config: RayftConfig, run_name: str) -> str:
    """A new folder for this attempt's export: `<exports>/<name>/<run>/<time>-<random>`. An attempt
    never writes where an earlier one did, so a registered version's files never change."""
    exports = config.train.export_path or str(rayft_home() / "models")
    attempt = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"
    return storage.join(exports, config.name, run_name, attempt)


def export_and_verify(checkpoint, base: str, config: RayftConfig, tokenizer, run_name: str) -> tuple[dict, list]:
    """Export `checkpoint` to a new folder (`export_location`), check it against its weight
    fingerprint; returns the export info and the checkpoint's step log."""
    target = export_location(config, run_name)
    with checkpoint.as_directory() as directory, storage.writable_dir(target) as local:
        log = report.read_log(Path(directory) / LOG_NAME)
        fingerprint = json.loads((Path(directory) / STATE_NAME).read_text())["fingerprint"]
        exported = export_checkpoint(directory, base, config.train, tokenizer, local)
        checked = verify_export(
            local, fingerprint, exported["kind"] == "adapter", rel_tol=1e-2 if config.train.use_gpu else 1e-6
        )
    return exported | {"path": target, "verified_tensors": checked}, log


def latest_checkpoint_step(run_dir: str) -> int | None:
    """The step of the newest checkpoint in a run folder (where `--resume` continues), if any."""
    steps = [int(name[len("step_") :]) for name in storage.list_dirs(run_dir) if name.startswith("step_")]
    return max(steps, default=None)


def parent_version(registry: Registry, start: str | None, run_dir: str) -> str | None:
    """The version this one continues: an earlier export of the same run, else `start` (the version
    of `train.init_from`, or a registry base)."""
    for version in reversed(registry.list()):
        if version.metrics.get("run_dir") == run_dir:
            return version.ref
    return start


def train(config: RayftConfig, resume: bool = False, show_progress: bool = True) -> ModelVersion:
    """Train `config`, export and register the result; returns the registered version."""
    from ray.train import TrainingFailedError

    # setup
    registry = Registry()
    try:
        base_version = registry_base(config.model.base, registry)
        base = str(verified_artifact(base_version)) if base_version else config.model.base
    except (RegistryError, storage.ArtifactMismatch) as error:
        raise ConfigError(f"model.base: {error}") from None
    base_uri, base_ref = (base_version.artifact_uri, base_version.ref) if base_version else (base, None)
    start = starting_point(config, registry, base_uri)
    if start and start.adapter and config.train.adapter:  # the adapter continues with its own shape
        config = config.model_copy(update={"train": config.train.model_copy(update={"lora": continued_lora(start)})})
    check_config(config, base)
    tokenizer = load_tokenizer(base, config.model.chat_template)
    manifest = Manifest.model_validate_json(storage.read_text(storage.join(config.dataset_dir(), MANIFEST)))
    template = config.model.chat_template
    if manifest.stats.get("tool_calls"):  # a base whose template writes no tools gets rayft's (rayft.chat)
        template = tool_template(tokenizer, template)
        tokenizer.chat_template = template or tokenizer.chat_template  # exported with the version
    ensure_ray()
    datasets, plan = tokenized_datasets(config, base, template)
    if config.train.objective == "dpo" and config.train.dpo.precompute_reference:
        datasets = with_reference_logps(
            datasets, base, config.train, start.folder if start else None, tokenizer.pad_token_id
        )
    runs, run_name = run_location(config, resume)
    run_dir = storage.join(runs, run_name)
    resumed_from = latest_checkpoint_step(run_dir) if resume else None
    scratch = rayft_home() / "scratch" / run_name
    spec = WorkerSpec(
        base=base,
        train=config.train,
        plan=plan,
        ds_config=deepspeed_config(config.train, plan.micro_batch, config.train.use_gpu),
        pad_id=tokenizer.pad_token_id,
        scratch_dir=str(scratch),
        init_from=start.folder if start else None,
        fault=InjectedFault.from_environment(scratch),
        tensorboard_dir=str(scratch / "tensorboard") if config.train.tensorboard else None,
    )
    scratch.mkdir(parents=True, exist_ok=True)
    print(
        f"[rayft] run {run_name}: {plan.total_steps} steps ({plan.epochs} epochs × {plan.steps_per_epoch}), "
        f"batch {plan.global_batch} = {plan.micro_batch} × {config.train.num_workers} workers × "
        f"{config.train.grad_accum} accumulation, lr {plan.learning_rate:g}, "
        f"DeepSpeed ZeRO stage {spec.ds_config['zero_optimization']['stage']}",
        flush=True,
    )

    # run
    follow = FollowLog(scratch / "log-rank0" / LOG_NAME, plan.total_steps, f"train {config.name}", show_progress)
    follow.start()
    try:
        result = build_trainer(config, spec, datasets, runs, run_name).fit()
    except TrainingFailedError as error:
        raise TrainingError(f"training run {run_name} failed: {error}") from error
    finally:
        follow.stop()

    # report
    exported, exported_log = export_and_verify(best_checkpoint(result), base, config, tokenizer, run_name)
    with result.checkpoint.as_directory() as directory:
        log = report.read_log(Path(directory) / LOG_NAME) or exported_log
    storage.write_text(storage.join(run_dir, LOG_NAME), "".join(json.dumps(r) + "\n" for r in log))
    report.plot_loss_curve(log, scratch / "loss.png")
    storage.upload_file(scratch / "loss.png", storage.join(run_dir, "loss.png"))
    if config.train.tensorboard:
        storage.upload_dir(scratch / "tensorboard", storage.join(run_dir, "tensorboard"))
    exported_steps = report.steps(exported_log)
    metrics = report.summarize(log) | {
        "exported_step": exported_steps[-1]["step"] if exported_steps else None,
        "stopped_early": bool(result.metrics.get("stopped_early")),
        "verified_tensors": exported["verified_tensors"],
        "plan": plan.to_dict(),
        "run_dir": run_dir,
        "resumed_from_step": resumed_from,
    }
    version = registry.register(
        config.name,
        exported["kind"],
        base_uri,
        exported["path"],
        weights_hash=exported["weights_hash"],
        dataset_hash=manifest.dataset_hash,
        config=config.model_dump(),
        metrics=metrics,
        parent=parent_version(registry, start.version.ref if start else base_ref, run_dir),
        project=config.project,
    )
    if config.train.epoch_checkpoints:
        register_epoch_ends(result, version, config, base, tokenizer, run_name, registry)
    return version


def register_epoch_ends(result, final: ModelVersion, config: RayftConfig, base: str, tokenizer, run_name, registry):
    """Each of the last `train.epoch_checkpoints` epochs' end states as a version of the run's name
    (its parent the final version's parent), aliased `ckpt-step-<step>` so it is served by name.
    The state the final version was exported from is not exported twice: its alias names it."""
    ends: dict[int, tuple[int, object, dict]] = {}
    for checkpoint, metrics in result.best_checkpoints:
        epoch, step = metrics.get("epoch"), metrics.get("step")
        if epoch is not None and (epoch not in ends or step > ends[epoch][0]):
            ends[epoch] = (step, checkpoint, metrics)
    for epoch in sorted(ends)[-config.train.epoch_checkpoints :]:
        step, checkpoint, metrics = ends[epoch]
        version = final
        if step != final.metrics.get("exported_step"):
            exported, _ = export_and_verify(checkpoint, base, config, tokenizer, run_name)
            version = registry.register(
                config.name,
                exported["kind"],
                final.base_model,
                exported["path"],
                weights_hash=exported["weights_hash"],
                dataset_hash=final.dataset_hash,
                config=final.config,
                metrics={k: v for k, v in metrics.items() if isinstance(v, int | float)} | {"checkpoint_of": final.ref},
                parent=final.parent,
                project=final.project,
            )
        registry.set_alias(config.name, f"ckpt-step-{step}", version.version, reason=f"epoch {epoch + 1} of {run_name}")
