"""The per-worker training loop that Ray Train runs on every worker (one process per rank).

setup   load the model (LoRA attached, or continuing a registered version), wrap it in DeepSpeed,
        pick the objective (`objectives.py`: supervised, or DPO with its reference), restore the
        latest checkpoint
run     micro-batches from this worker's Ray Data shard → the objective's loss → backward/step;
        validation every `eval_every` steps; early stopping; DeepSpeed checkpoints reported to Ray
        Train (and one at each epoch's end with `epoch_checkpoints`)
report  rank 0 writes one JSON line per optimizer step to `metrics.jsonl` (`run_log.py`), carried in
        checkpoints

All ranks take the same number of steps: before each micro-batch the ranks agree (an all-reduce of
"I have a batch") so an uneven shard can never leave one rank waiting in a collective.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rayft.config import TrainConfig
from rayft.plan import TrainPlan
from rayft.training.checkpoints import weights_only_loads
from rayft.training.faults import InjectedFault
from rayft.training.objectives import all_reduce, learned_tokens, objective_for, synced
from rayft.training.run_log import LOG_NAME, RunLog

STATE_NAME = "train_state.json"


@dataclass
class WorkerSpec:
    """Everything a worker needs (sent through Ray)."""

    base: str
    train: TrainConfig
    plan: TrainPlan
    ds_config: dict
    pad_id: int
    scratch_dir: str  # node-local folder for checkpoints before Ray uploads them
    init_from: str | None = None  # the verified folder of the registered version training continues
    fault: InjectedFault | None = None  # test hook: the last rank exits once at a step
    tensorboard_dir: str | None = None


@dataclass
class TrainState:
    """Progress saved in every checkpoint (identical on all ranks)."""

    step: int = 0
    epoch: int = 0
    batches_in_epoch: int = 0
    best_val_loss: float | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    last_val_loss: float | None = None


@dataclass
class StepStats:
    values: dict = field(default_factory=dict)  # per micro-batch: loss (and DPO's reward statistics)
    micro_batches: int = 0
    label_tokens: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)

    def add(self, values: dict) -> None:
        for key, value in values.items():
            self.values[key] = self.values.get(key, 0.0) + value
        self.micro_batches += 1


def validate(engine, objective, shard, micro: int) -> dict:
    """The objective's validation metrics over the whole split (all ranks together)."""
    engine.eval()
    metrics = objective.validate(engine, shard, micro)
    engine.train()
    return metrics


def save_checkpoint(engine, state: TrainState, metrics: dict, spec: WorkerSpec, log: RunLog, rank: int, lora: bool):
    """DeepSpeed checkpoint of every rank, reported to Ray Train (which merges and uploads it)."""
    import ray.train

    from rayft.training.model import weight_fingerprint

    local = Path(spec.scratch_dir) / f"rank{rank}" / f"step_{state.step:06d}"
    shutil.rmtree(local, ignore_errors=True)
    engine.save_checkpoint(str(local), tag="ds", client_state=asdict(state), exclude_frozen_parameters=lora)
    fingerprint = weight_fingerprint(engine.module, trainable_only=lora)
    if rank == 0:
        (local / STATE_NAME).write_text(json.dumps({"state": asdict(state), "fingerprint": fingerprint}))
        if log.path.exists():
            shutil.copy(log.path, local / LOG_NAME)
    ray.train.report(
        metrics,
        checkpoint=ray.train.Checkpoint.from_directory(str(local)),
        checkpoint_dir_name=f"step_{state.step:06d}",
        delete_local_checkpoint_after_upload=True,
    )
    # Ray Train registers a checkpoint only once its controller has polled every rank's report;
    # a worker that dies before that loses it. Each rank's report queue holds one entry, so a second
    # report returns only after the checkpoint's was taken: training then never runs ahead of its
    # last registered checkpoint (cost: up to one controller poll per checkpoint).
    ray.train.report(metrics)


def use_cpu_share(cpus: float) -> int:
    """Compute on the worker's CPU share (`train.cpus_per_worker`, floor, at least 1), whatever
    OMP_NUM_THREADS the process inherited: Ray sets it only when it is unset, so a cluster started
    from a shell that exported it gave every worker that many threads, and two workers on two cores
    then spun on each other's OpenMP barriers (LoRA steps 4x slower, bench/RESULTS.md)."""
    import torch

    threads = max(1, int(cpus))
    torch.set_num_threads(threads)
    return threads


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train entry point: train, validate, checkpoint; see the module docstring."""
    import ray.train
    import torch

    from rayft.training.model import build_engine, load_model, load_reference

    # setup
    spec: WorkerSpec = loop_config["spec"]
    train, plan = spec.train, spec.plan
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    use_cpu_share(train.cpus_per_worker)
    torch.manual_seed(train.seed)
    lora = train.adapter
    model = load_model(spec.base, train, spec.init_from)
    engine, scheduler = build_engine(
        model, train, spec.ds_config, plan.learning_rate, plan.warmup_steps, plan.total_steps
    )
    objective = objective_for(train, spec.pad_id, load_reference(spec.base, train, spec.init_from, spec.ds_config))
    state = TrainState()
    log = RunLog(Path(spec.scratch_dir) / f"log-rank{rank}" / LOG_NAME, rank == 0, spec.tensorboard_dir)
    checkpoint = ray.train.get_checkpoint()
    if not checkpoint and log.path.exists():
        log.path.unlink()  # left by an attempt that crashed before its first checkpoint
    if checkpoint:
        with checkpoint.as_directory() as directory, weights_only_loads():
            _, client_state = engine.load_checkpoint(directory, tag="ds", load_module_strict=not lora)
            known = TrainState.__dataclass_fields__  # ZeRO-3 adds its own keys to the client state
            state = TrainState(**{k: v for k, v in client_state.items() if k in known})
            log.restore(directory, state.step)
        log.write({"event": "resumed", "from_step": state.step, "epoch": state.epoch})
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if plan.n_val else None
    micro, total = plan.micro_batch, plan.total_steps

    # run
    stats, saved_step = StepStats(), state.step
    while state.step < total and not state.stopped_early and state.epoch < plan.epochs:
        batches = synced(objective.micro_batches(train_shard, micro, seed=train.seed + state.epoch))
        for index, batch in enumerate(batches, start=1):
            if index <= state.batches_in_epoch:
                continue  # consumed before the checkpoint we resumed from
            loss, values = objective.loss(engine, batch)
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            stats.add(values)
            stats.label_tokens += learned_tokens(batch)
            stats.tokens += sum(1 for row in batch.input_ids for t in row if t != spec.pad_id)
            state.batches_in_epoch = index
            if not boundary:
                continue
            state.step += 1
            if spec.fault:
                spec.fault.maybe_exit(state.step, rank, world)
            names = sorted(stats.values)
            *sums, n, tokens = all_reduce([stats.values[k] for k in names] + [stats.micro_batches, stats.tokens])
            elapsed = time.perf_counter() - stats.started
            grad_norm = engine.get_global_grad_norm()
            record = {"step": state.step, "epoch": state.epoch} | {k: v / n for k, v in zip(names, sums)}
            record |= {
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            }
            stats = StepStats()
            at_checkpoint = state.step % train.checkpoint_every == 0 or state.step >= total
            if val_shard is not None and (state.step % train.eval_every == 0 or at_checkpoint):
                record |= validate(engine, objective, val_shard, micro)
                state.last_val_loss = record.get("val_loss")
                _track_early_stopping(state, train)
            log.write(record)
            if at_checkpoint or state.stopped_early:
                metrics = {k: v for k, v in record.items() if v is not None}
                metrics["val_loss"] = state.last_val_loss if state.last_val_loss is not None else metrics["loss"]
                metrics["stopped_early"] = state.stopped_early
                save_checkpoint(engine, state, metrics, spec, log, rank, lora)
                saved_step = state.step
            if state.step >= total or state.stopped_early:
                break
        else:
            if train.epoch_checkpoints and state.step != saved_step:  # each epoch's end is a checkpoint
                save_where_it_ended(engine, objective, val_shard, micro, state, spec, log, rank)
                saved_step = state.step
            state.epoch += 1
            state.batches_in_epoch = 0

    # report: the data ran out before the planned step count; checkpoint where it ended
    if state.step != saved_step:
        save_where_it_ended(engine, objective, val_shard, micro, state, spec, log, rank)
    log.close()


def save_where_it_ended(engine, objective, val_shard, micro: int, state: TrainState, spec: WorkerSpec, log, rank: int):
    """A checkpoint after the last step of an epoch (or of the data), validated first."""
    metrics = {"step": state.step, "epoch": state.epoch, "stopped_early": state.stopped_early}
    if val_shard is not None:
        metrics |= validate(engine, objective, val_shard, micro)
        state.last_val_loss = metrics.get("val_loss")
    metrics["val_loss"] = state.last_val_loss if state.last_val_loss is not None else float("nan")
    save_checkpoint(engine, state, metrics, spec, log, rank, spec.train.adapter)


def _track_early_stopping(state: TrainState, train: TrainConfig) -> None:
    if state.last_val_loss is None:
        return
    if state.best_val_loss is None or state.last_val_loss < state.best_val_loss - 1e-6:
        state.best_val_loss = state.last_val_loss
        state.evals_without_improvement = 0
        return
    state.evals_without_improvement += 1
    patience = train.early_stopping_patience
    if patience and state.evals_without_improvement >= patience:
        state.stopped_early = True
