"""The per-worker training loop that Ray Train runs on every worker (one process per rank).

setup   load the model (LoRA attached), wrap it in DeepSpeed, restore the latest checkpoint
run     micro-batches from this worker's Ray Data shard → forward/backward/step; validation every
        `eval_every` steps; early stopping; DeepSpeed checkpoints reported to Ray Train
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
from rayft.training.formatting import IGNORE_INDEX, Batch, pack_examples, packed_batch, pad_batch
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
    losses: list = field(default_factory=list)
    label_tokens: int = 0
    tokens: int = 0
    started: float = field(default_factory=time.perf_counter)


def _all_reduce(values: list[float], op: str = "sum") -> list[float]:
    import torch
    import torch.distributed as dist

    tensor = torch.tensor(values, dtype=torch.float64)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN if op == "min" else dist.ReduceOp.SUM)
    return tensor.tolist()


def synced(batches):
    """Yield batches while every rank still has one; stop on all ranks together."""
    iterator = iter(batches)
    while True:
        batch = next(iterator, None)
        if _all_reduce([0.0 if batch is None else 1.0], op="min")[0] == 0.0:
            return
        yield batch


def _examples(batch: dict) -> list[dict]:
    return [
        {"input_ids": list(ids), "labels": list(labels)} for ids, labels in zip(batch["input_ids"], batch["labels"])
    ]


def micro_batches(shard, train: TrainConfig, micro: int, pad_id: int, seed: int):
    """This worker's micro-batches for one epoch (padded, or packed rows with restarting positions)."""
    chunk = micro * 16 if train.packing else micro
    rows = shard.iter_batches(
        batch_size=chunk,
        batch_format="numpy",
        local_shuffle_buffer_size=max(64, 4 * chunk),
        local_shuffle_seed=seed,
        drop_last=False,
    )
    for batch in rows:
        examples = _examples(batch)
        if not train.packing:
            yield pad_batch(examples, pad_id)
            continue
        packed = pack_examples(examples, train.max_seq_len)
        for i in range(0, len(packed), micro):
            yield packed_batch(packed[i : i + micro], pad_id)


def to_model_inputs(batch: Batch) -> dict:
    import torch

    inputs = {
        "input_ids": torch.tensor(batch.input_ids),
        "labels": torch.tensor(batch.labels),
        "position_ids": torch.tensor(batch.position_ids),
        "use_cache": False,  # required for packed rows to stay isolated (see module docstring)
    }
    if batch.attention_mask is not None:
        inputs["attention_mask"] = torch.tensor(batch.attention_mask)
    return inputs


def _label_count(batch: Batch) -> int:
    return int(sum(1 for row in batch.labels for x in row[1:] if x != IGNORE_INDEX))


def validation_loss(engine, shard, train: TrainConfig, micro: int, pad_id: int) -> float | None:
    """Token-weighted mean loss over the whole validation split (all ranks together)."""
    import torch

    if shard is None:
        return None
    engine.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for batch in synced(micro_batches(shard, train, micro, pad_id, seed=0)):
            n = _label_count(batch)
            total += float(engine(**to_model_inputs(batch)).loss) * n
            count += n
    engine.train()
    total, count = _all_reduce([total, float(count)])
    return total / count if count else None


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

    from rayft.training.model import build_engine, load_model

    # setup
    spec: WorkerSpec = loop_config["spec"]
    train, plan = spec.train, spec.plan
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    use_cpu_share(train.cpus_per_worker)
    torch.manual_seed(train.seed)
    lora = train.method != "full"
    model = load_model(spec.base, train)
    engine, scheduler = build_engine(
        model, train, spec.ds_config, plan.learning_rate, plan.warmup_steps, plan.total_steps
    )
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
        batches = synced(micro_batches(train_shard, train, micro, spec.pad_id, seed=train.seed + state.epoch))
        for index, batch in enumerate(batches, start=1):
            if index <= state.batches_in_epoch:
                continue  # consumed before the checkpoint we resumed from
            loss = engine(**to_model_inputs(batch)).loss
            engine.backward(loss)
            boundary = engine.is_gradient_accumulation_boundary()
            engine.step()
            stats.losses.append(loss.item())
            stats.label_tokens += _label_count(batch)
            stats.tokens += sum(1 for row in batch.input_ids for t in row if t != spec.pad_id)
            state.batches_in_epoch = index
            if not boundary:
                continue
            state.step += 1
            if spec.fault:
                spec.fault.maybe_exit(state.step, rank, world)
            loss_sum, n, tokens = _all_reduce([sum(stats.losses), len(stats.losses), stats.tokens])
            elapsed = time.perf_counter() - stats.started
            grad_norm = engine.get_global_grad_norm()
            record = {
                "step": state.step,
                "epoch": state.epoch,
                "loss": loss_sum / n,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm) if grad_norm is not None else None,
                "tokens_per_s": tokens / elapsed if elapsed > 0 else 0.0,
            }
            stats = StepStats()
            at_checkpoint = state.step % train.checkpoint_every == 0 or state.step >= total
            if val_shard is not None and (state.step % train.eval_every == 0 or at_checkpoint):
                record["val_loss"] = state.last_val_loss = validation_loss(engine, val_shard, train, micro, spec.pad_id)
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
            state.epoch += 1
            state.batches_in_epoch = 0

    # report: the data ran out before the planned step count; checkpoint where it ended
    if state.step != saved_step:
        if val_shard is not None:
            state.last_val_loss = validation_loss(engine, val_shard, train, micro, spec.pad_id)
        metrics = {"step": state.step, "stopped_early": state.stopped_early}
        metrics["val_loss"] = state.last_val_loss if state.last_val_loss is not None else float("nan")
        save_checkpoint(engine, state, metrics, spec, log, rank, lora)
    log.close()


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
