"""Connecting to Ray: an existing cluster when `RAY_ADDRESS` is set, else a local one.

Every stage starts Ray through `ensure_ray()`, so the whole product runs the same on a laptop and
on a cluster (where `rayft submit` sets `RAY_ADDRESS`).
"""

from __future__ import annotations

import logging
import os

# Ray 2.60 turns token auth on for a new local cluster whenever RAY_AUTH_MODE is unset, and then a
# Jobs client without the token gets HTTP 401. rayft sets the mode explicitly: a local cluster we
# start ourselves listens on 127.0.0.1 only, so it runs without tokens unless the user chose one.
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
# Ray Train registers a reported checkpoint only when its controller polls (every 2 s by default);
# a worker that dies within that window loses the checkpoint, and each checkpoint and the run's end
# wait for a poll. Poll faster: a 16-step LoRA run with two checkpoints took 17.7 s at 0.25 s, 18.8 s
# at 0.5 s and 18.3 s at 0.1 s (bench/RESULTS.md, "Ray Train's poll interval").
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")

# Logical CPUs for a local cluster. More than the machine's cores on purpose: training workers
# take fractional CPUs, and Ray Data's map tasks must still get a slot while workers run
# (otherwise the pipeline waits forever; see docs/training.md).
LOCAL_MIN_CPUS = 4


def ensure_ray(num_cpus: int | None = None, log_to_driver: bool | None = None) -> None:
    """Start or connect to Ray once per process. With `log_to_driver=False` (a long-running server,
    or any command on a quiet console: `RAYFT_QUIET`) what workers print stays in Ray's session logs
    instead of this process's console.

    A local cluster starts without Ray's dashboard and without Ray's own metrics (rayft's serving
    metrics are its own Prometheus registry): nothing in rayft uses them there, and on a small
    machine their periodic work preempts the training worker's threads (bench/RESULTS.md). For the
    dashboard, start a head (`ray start --head`) and point `RAY_ADDRESS` at it.

    On an existing cluster it first frees the placement groups whose creators are gone
    (`rayft.leftovers`): a stopped job can leave one holding CPUs for good."""
    import ray
    import ray.data

    if ray.is_initialized():
        return
    if log_to_driver is None:
        log_to_driver = not os.environ.get("RAYFT_QUIET")
    address = os.environ.get("RAY_ADDRESS")
    if address:
        from rayft.leftovers import free_leftover_placement_groups

        ray.init(address=address, logging_level=logging.WARNING, log_to_driver=log_to_driver)
        free_leftover_placement_groups()  # what a stopped job left holding CPUs this stage may need
    else:
        cpus = num_cpus or max(os.cpu_count() or 1, LOCAL_MIN_CPUS)
        ray.init(
            address="local",
            num_cpus=cpus,
            include_dashboard=False,
            logging_level=logging.WARNING,
            log_to_driver=log_to_driver,
            _system_config={"enable_metrics_collection": False},
            runtime_env={"worker_process_setup_hook": "rayft.runtime.quiet_placement_group_cleaner"},
        )
    context = ray.data.DataContext.get_current()
    # Ray Data's per-operator progress bars flood logs of long jobs; rayft reports its own progress.
    context.enable_progress_bars = False
    # Hash shuffles (groupby) default to 200 partitions, far too many tasks for a small cluster.
    context.default_hash_shuffle_parallelism = max(4, 2 * int(ray.cluster_resources().get("CPU", 2)))


def quiet_placement_group_cleaner() -> None:
    """Worker setup hook of the local cluster: Ray Train's placement group cleaner asks the
    dashboard's state API every second whether the run's controller is still alive, and logs a
    warning each time it cannot. The local cluster has no dashboard, and its placement groups end
    with the cluster, which ends with this process."""
    logging.getLogger("ray.train.v2._internal.execution.controller.placement_group_cleaner").setLevel(logging.ERROR)
