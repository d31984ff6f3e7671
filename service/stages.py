"""What each stage of a fine-tuning job leaves behind, read and recorded as the job's events and
fields: the job machine's `work` port (`machine.py`).

validate  every record of the uploaded files checked as data prepare checks them, tokens counted
          with the base's tokenizer and template, the run estimated, the job's config written
data      the manifest's counts and rejects (rejects.jsonl becomes a result file)
train     step metrics while it runs, then the version it registered (its epochs' end states are
          the job's checkpoints); run again with `--resume` once its run has begun
eval      the report's metrics and the gate's verdict
gate      promotion to `metadata.promote_to` when the gate passes; the step metrics as a result file
cancel    the versions registered before the cancel took effect are deleted
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

from rayft import storage
from rayft.config import RayftConfig
from rayft.data.inspect import check_files
from rayft.estimate import estimate
from rayft.eval.promotion import PromotionRefused, promote, stored_report
from rayft.plan import PlanError
from rayft.registry import ModelVersion, Registry, RegistryError
from rayft.service import pipeline
from rayft.service.files import FileStore
from rayft.service.machine import JobFailed, Say
from rayft.service.objects import PROMOTE_KEY, Job, Stage, now
from rayft.service.pipeline import ServicePaths
from rayft.service.store import ServiceStore


class PipelineWork:
    """The stages' inputs and outputs for jobs fine-tuning the server's base."""

    def __init__(self, server: RayftConfig, base_path: str, paths: ServicePaths, store: ServiceStore, files: FileStore):
        self.server, self.config, self.base_path, self.paths = server, server.serve.fine_tuning, base_path, paths
        self.store, self.files, self.registry = store, files, Registry(paths.registry)

    def validate(self, job: Job, say: Say) -> None:
        """Every record checked and counted; too many unusable ones fail the job (the rejects kept
        as a result file), else the job gets its estimate and config."""
        files = [self.store.file(job.training_file)] + (
            [self.store.file(job.validation_file)] if job.validation_file else []
        )
        if any(f is None or not Path(f.path).is_file() for f in files):
            raise JobFailed("file_not_found", "training_file: the file was deleted before the job ran", "training_file")
        config = pipeline.job_config(self.server, job, [f.path for f in files], self.paths)
        try:
            check = check_files([f.path for f in files], config.data, self.base_path, config.model.chat_template)
        except (ValueError, OSError) as error:  # a table file that cannot be read
            raise JobFailed(
                "invalid_training_file", f"training_file: cannot be read: {error}", "training_file"
            ) from None
        if check.rejects and (not check.kept or len(check.rejects) > self.config.max_rejected_fraction * check.records):
            rejects = self.paths.job_folder(job) / "rejects.jsonl"
            rejects.parent.mkdir(parents=True, exist_ok=True)
            rejects.write_text("".join(json.dumps(r.public()) + "\n" for r in check.rejects))
            job.result_files.append(self.files.keep_result(job.project, rejects, "rejects.jsonl").id)
            raise JobFailed("invalid_training_file", f"training_file: {check.rejects_summary()}", "training_file")
        try:
            job.estimate = estimate(config.train, config.data.split, check.kept, check.tokens)
        except PlanError as error:
            raise JobFailed("invalid_training_file", f"training_file: {error}", "training_file") from None
        pipeline.write_config(config, self.paths.config(job))
        job.estimated_finish = now() + round(job.estimate.seconds)
        usable = f"{check.kept} of {check.records} records usable" if check.rejects else f"{check.records} records"
        say(f"Files validated ({usable}): {job.estimate.summary()}", data=job.estimate.model_dump())

    def resume_args(self, job: Job) -> list[str]:
        return ["--resume"] if pipeline.run_begun(self.server, job, self.paths) else []

    def live_steps(self, job: Job, say: Say) -> None:
        self.record_steps(job, pipeline.live_steps(job, self.paths), say)

    def after(self, stage: Stage, job: Job, say: Say) -> list[str]:
        return {Stage.DATA: self.after_data, Stage.TRAIN: self.after_train, Stage.EVAL: self.after_eval}[stage](
            job, say
        )

    def after_data(self, job: Job, say: Say) -> list[str]:
        manifest = pipeline.manifest_of(job, self.paths)
        counts = manifest.counts
        rejected = ", ".join(f"{n} {reason}" for reason, n in manifest.rejects_by_reason.items()) or "none"
        say(
            f"Data prepared: {counts.input} records in, {counts.kept} kept (train {counts.train}, validation "
            f"{counts.val}, test {counts.test}); removed: {rejected}",
            data={"counts": counts.model_dump(), "rejects_by_reason": manifest.rejects_by_reason},
        )
        rejects = pipeline.rejects_file(job, self.paths)
        if rejects:
            job.result_files.append(self.files.keep_result(job.project, rejects, "rejects.jsonl").id)
        return []

    def after_train(self, job: Job, say: Say) -> list[str]:
        registered = pipeline.job_versions(self.registry, job, self.paths)
        version = registered.final
        if version is None:
            raise JobFailed("stage_failed", "train succeeded but registered no version")
        steps = pipeline.read_steps(storage.read_text(storage.join(version.metrics["run_dir"], pipeline.STEP_LOG)))
        self.record_steps(job, steps, say)
        if job.estimate and steps:
            job.trained_tokens = round(job.estimate.trained_tokens * steps[-1]["step"] / job.estimate.steps)
        say(f"Trained and registered {version.ref}", data={"version": version.ref})
        if registered.checkpoints:
            listed = ", ".join(f"{ended.ref} (step {step})" for step, ended in registered.checkpoints)
            say(f"Epoch checkpoints: {listed}", data={"checkpoints": [v.ref for _, v in registered.checkpoints]})
        return ["--model", version.ref]

    def after_eval(self, job: Job, say: Say) -> list[str]:
        version = self.registered(job)
        report = stored_report(version)
        metric = report.primary_metric
        say(
            f"Evaluated on {report.n} test records: {metric} base {report.primary('base')} → "
            f"{version.ref} {report.primary('candidate')}",
            data={"metrics": report.metrics, "primary_metric": metric},
        )
        passed = all(c.passed for c in report.verdict)
        failed = "; ".join(c.detail for c in report.verdict if not c.passed)
        say(
            "Gate passed" if passed else f"Gate failed: {failed}",
            level="info" if passed else "warn",
            data={"checks": [c.model_dump() for c in report.verdict]},
        )
        return []

    def gate(self, job: Job, say: Say) -> None:
        version = self.registered(job)
        alias = (job.metadata or {}).get(PROMOTE_KEY)
        if alias:  # the job's own name: `ft-<its project>-...`, so only its project's aliases move
            try:
                promote(self.registry, version.ref, alias, actor=f"fine-tuning job {job.id}")
                say(f"Promoted {version.ref} to {version.name}:{alias}")
            except PromotionRefused as refused:
                say(f"Not promoted to {version.name}:{alias}: {refused}", level="warn")
        steps = self.store.metric_events(job.id)
        metrics_file = self.paths.job_folder(job) / "step_metrics.csv"
        metrics_file.write_text(pipeline.steps_csv([e.data for e in steps]))
        job.result_files.append(self.files.keep_result(job.project, metrics_file, "step_metrics.csv").id)
        job.fine_tuned_model = version.ref

    def clean_up(self, job: Job, say: Say) -> None:
        registered = pipeline.job_versions(self.registry, job, self.paths)
        final = [registered.final] if registered.final else []
        for version in [v for _, v in registered.checkpoints if v not in final] + final:
            with contextlib.suppress(RegistryError):  # an alias points to it (moved there meanwhile): it stays
                self.registry.delete(version.ref)
                say(f"Deleted {version.ref}, registered before the cancel took effect")

    def registered(self, job: Job) -> ModelVersion | None:
        """The final model this job's train stage registered."""
        return pipeline.job_versions(self.registry, job, self.paths).final

    def record_steps(self, job: Job, steps: list[dict], say: Say) -> None:
        """Events for the steps not yet recorded (in the store, or said earlier in this step)."""
        seen = {e.data["step"] for e in self.store.metric_events(job.id)}
        seen |= {options["data"]["step"] for _, options in say.events if options.get("kind") == "metrics"}
        total = job.estimate.steps if job.estimate else None
        for record in steps:
            if record["step"] not in seen:
                message, data = pipeline.step_event(record, total)
                say(message, kind="metrics", data=data)
