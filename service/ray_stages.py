"""The job machine's `cluster` port on a real Ray cluster: each stage is `rayft <stage> CONFIG` run
as a Ray job through the cluster's Jobs API (`rayft.cluster.submit`), looked at, stopped, and
asked what its work waits for (`rayft.cluster.waiting`)."""

from __future__ import annotations

from rayft.cluster import waiting
from rayft.cluster.client import Cluster
from rayft.cluster.submit import submit_stage
from rayft.service.objects import Job, Stage
from rayft.service.pipeline import ServicePaths


class RayStages:
    def __init__(self, address: str, paths: ServicePaths):
        self.address, self.paths = address, paths
        self._cluster: Cluster | None = None

    def cluster(self) -> Cluster:
        if self._cluster is None:
            self._cluster = Cluster(self.address)
        return self._cluster

    def submit(self, job: Job, stage: Stage, args: list[str]) -> str:
        upload = self.paths.job_folder(job) / "upload"  # nothing but the config travels with the job
        upload.mkdir(parents=True, exist_ok=True)
        submission = submit_stage(
            stage.value,
            str(self.paths.config(job)),
            address=self.cluster().address,
            working_dir=str(upload),
            env={"RAYFT_HOME": self.paths.home},
            extra=args,
        )
        return submission.job_id

    def status(self, ray_job: str) -> str:
        return str(self.cluster().call("get_job_status", ray_job))

    def last_error(self, ray_job: str) -> str:
        return last_error(self.cluster().call("get_job_logs", ray_job))

    def stop(self, ray_job: str) -> None:
        self.cluster().call("stop_job", ray_job)

    def stuck(self, ray_job: str) -> str | None:
        """What the stage's work waits for, when it cannot get it now and nothing of it runs."""
        stuck = waiting.stuck(self.cluster(), ray_job)
        return stuck.describe() if stuck else None


def last_error(logs: str) -> str:
    """The line of a stage's output that says what went wrong: its `error:` line, else its last."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:") or "Error:" in line]
    return ((errors or lines or ["no output"])[-1])[:500]
