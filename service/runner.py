"""The job runner: one Serve replica that runs the job machine (`machine.py`) over every
fine-tuning job, every `serve.fine_tuning.poll_s` or at once when a route wakes it (a job was
created or cancelled). A thin wrapper: what happens to a job is the machine's.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from ray import serve

from rayft.config import RayftConfig
from rayft.projects import ProjectDirectory
from rayft.service.files import FileStore
from rayft.service.machine import JobMachine
from rayft.service.pipeline import ServicePaths
from rayft.service.ray_stages import RayStages
from rayft.service.stages import PipelineWork
from rayft.service.store import ServiceStore

logger = logging.getLogger("ray.serve")


def job_machine(server: RayftConfig, base_path: str, paths: ServicePaths, projects: ProjectDirectory) -> JobMachine:
    """The machine for a server's config, on the cluster its `jobs_address` names."""
    config = server.serve.fine_tuning
    store = ServiceStore(paths.registry)
    files = FileStore(config, store, paths.files, projects)
    work = PipelineWork(server, base_path, paths, store, files)
    return JobMachine(config, store, files, projects, RayStages(config.jobs_address, paths), work)


@serve.deployment(name="fine_tuning", num_replicas=1, ray_actor_options={"num_cpus": 0})
class JobRunner:
    def __init__(self, server_config: dict, base_path: str, paths: ServicePaths, projects: ProjectDirectory):
        """`server_config` without keys; `projects`: their limits, without keys (the runner checks none)."""
        server = RayftConfig.model_validate(server_config)
        self.poll_s = server.serve.fine_tuning.poll_s
        self.machine = job_machine(server, base_path, paths, projects)
        self.wakeup = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(self.run_forever())

    async def wake(self) -> None:
        """Look at the jobs now."""
        self.wakeup.set()

    async def run_forever(self) -> None:
        while True:
            try:
                await asyncio.to_thread(self.machine.tick)
            except Exception:  # a bug of ours must not stop every later job
                logger.exception("rayft fine-tuning: the job runner's pass failed")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.wakeup.wait(), self.poll_s)
            self.wakeup.clear()

    def __del__(self):
        self.task.cancel()
