"""What a Ray job's work is waiting for: its tasks, actors and placement groups Ray has not yet
scheduled, with what each needs, read from the cluster's state API (the dashboard).

A job is *stuck* when something of it waits for resources it cannot get now (more than is free,
and the cluster's scheduler holds all of its waiting work back) and nothing of it that holds
resources runs or starts (no plain task under way, no actor alive or being created that holds CPUs
or GPUs, no work granted its resources while its process launches): then no finishing task of its
own will free what it waits for. A job whose Ray Data stage queues more tasks than fit, while
others run or wait for their worker processes to start, is busy, not stuck.

The state API, the free resources and the scheduler's queue are each reported on their own period
(about a second), so one look can still misjudge a job whose work is changing state; the
fine-tuning service reports a stage only when it reads stuck on every look for `stage_wait_s`, and
fails it after a timeout (`service/machine.py`).
"""

from __future__ import annotations

import json
import logging
import urllib.parse
import urllib.request
from collections import Counter
from dataclasses import dataclass

from rayft.cluster.client import Cluster, ClusterError

log = logging.getLogger(__name__)

WAITING_TASK, WAITING_ACTOR, WAITING_GROUP = "PENDING_NODE_ASSIGNMENT", "PENDING_CREATION", "PENDING"
# A task in any of these states has its node and its resources (or waits for its arguments, which
# running work makes): it runs, or runs as soon as its worker process has started. A task reads as
# SUBMITTED_TO_WORKER while that process starts, for seconds on a loaded machine, and the tasks
# queued behind it then read as waiting for CPUs that no one else holds.
UNDER_WAY = (
    "PENDING_OBJ_STORE_MEM_AVAIL",
    "PENDING_ARGS_FETCH",
    "SUBMITTED_TO_WORKER",
    "GETTING_AND_PINNING_ARGS",
    "RUNNING",
    "RUNNING_IN_RAY_GET",
    "RUNNING_IN_RAY_WAIT",
)
HELD = ("CPU", "GPU")


@dataclass(frozen=True)
class Demand:
    """Work of one kind waiting for resources: what it is, how many, what each needs."""

    what: str
    count: int
    needs: dict[str, float]

    @property
    def group(self) -> bool:
        """A placement group's (the scheduler queues groups apart from tasks and actors)."""
        return self.what.startswith("placement group")

    @property
    def shape(self) -> tuple[float, ...]:
        """The CPUs and GPUs one unit needs, as the scheduler groups the work it holds back."""
        return tuple(self.needs.get(k, 0.0) for k in HELD)

    def describe(self) -> str:
        needs = ", ".join(f"{k} {v:g}" for k, v in sorted(self.needs.items()) if v) or "no resources"
        return f"{self.count} × {self.what} ({needs} each)"


@dataclass(frozen=True)
class Stuck:
    """A job's work that waits while nothing of it runs, beside what the cluster has."""

    demands: list[Demand]
    free: dict[str, float]
    total: dict[str, float]

    def describe(self) -> str:
        held = ", ".join(f"{k} {self.free.get(k, 0):g} of {v:g}" for k, v in sorted(self.total.items()) if k in HELD)
        return f"needs {'; '.join(d.describe() for d in self.demands)}; free now: {held or 'unknown'}"


def state_list(cluster: Cluster, kind: str, filters: list[tuple[str, str, str]]) -> list[dict]:
    """One list of Ray's state API (`tasks`, `actors`, `placement_groups`), filtered, with details."""
    query = [("limit", 1000), ("detail", "true")]
    for key, predicate, value in filters:
        query += [("filter_keys", key), ("filter_predicates", predicate), ("filter_values", value)]
    url = f"{cluster.address}/api/v0/{kind}?{urllib.parse.urlencode(query)}"
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=cluster.headers), timeout=10) as response:
            return json.loads(response.read())["data"]["result"]["result"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise ClusterError(f"{cluster.address}: the state API did not list {kind}: {error}") from None


def holds_resources(required: dict | None) -> bool:
    """Whether work with these required resources holds CPUs or GPUs: its own, or its placement
    group bundle's (`CPU_group_<id>`, as Ray Train's workers hold theirs)."""
    return any(amount > 0 and name.split("_group_")[0] in HELD for name, amount in (required or {}).items())


def started(actor: dict) -> bool:
    """Whether an actor holds its resources: alive, or being created in a process of its own (its
    worker process starting, or its `__init__` running, as a vLLM engine's does for seconds): the
    state API lists it PENDING_CREATION with a pid then, and with none while it waits for them."""
    return actor.get("state") == "ALIVE" or (actor.get("state") == WAITING_ACTOR and bool(actor.get("pid")))


def in_placement_group(required: dict | None) -> bool:
    """Whether the work runs in a placement group's bundle (`CPU_group_<id>`): the group holds its
    resources already, or waits itself (and is reported as the group)."""
    return any("_group_" in name for name in required or {})


def stuck_work(cluster: Cluster, submission_id: str) -> list[Demand]:
    """The demands of a submitted job's work that waits while nothing of it runs (empty when it
    runs, or when its driver has not connected yet)."""
    job_id = cluster.call("get_job_info", submission_id).job_id
    if not job_id:
        return []
    in_job = ("job_id", "=", job_id)
    unfinished = state_list(cluster, "tasks", [in_job, ("state", "!=", "FINISHED"), ("state", "!=", "FAILED")])
    actors = state_list(cluster, "actors", [in_job])
    if any(t.get("type") == "NORMAL_TASK" and t.get("state") in UNDER_WAY for t in unfinished) or any(
        started(a) and holds_resources(a.get("required_resources")) for a in actors
    ):
        return []
    kinds: Counter = Counter()
    needs: dict[str, dict] = {}
    for task in (t for t in unfinished if t.get("state") == WAITING_TASK and t.get("type") == "NORMAL_TASK"):
        if in_placement_group(task.get("required_resources")):
            continue
        what = f"task {task.get('func_or_class_name') or task.get('name')}"
        kinds[what] += 1
        needs[what] = task.get("required_resources") or {}
    for actor in actors:
        if (
            actor.get("state") == WAITING_ACTOR
            and not started(actor)
            and not in_placement_group(actor.get("required_resources"))
        ):
            what = f"actor {actor.get('class_name')}"
            kinds[what] += 1
            needs[what] = actor.get("required_resources") or {}
    groups = state_list(cluster, "placement_groups", [("creator_job_id", "=", job_id), ("state", "=", WAITING_GROUP)])
    for group in groups:
        bundles = group.get("bundles") or []
        what = f"placement group of {len(bundles)} bundles (all of it)"
        kinds[what] += 1
        units = [b.get("unit_resources") or {} for b in bundles]
        needs[what] = {k: sum(u.get(k, 0) for u in units) for k in set().union(*units)}
    return [Demand(what, count, {k: float(v) for k, v in needs[what].items()}) for what, count in kinds.items()]


def fits(demand: Demand, free: dict[str, float]) -> bool:
    """Whether one unit of `demand` fits in what is free now (a task then waits for a worker to
    start, not for resources)."""
    return all(free.get(name, 0.0) + 1e-9 >= amount for name, amount in demand.needs.items() if amount > 0)


def launching(demands: list[Demand], queued: dict[bool, list[dict[str, float]] | None]) -> bool:
    """Whether some of the work the state API shows waiting has its resources and is launching its
    process: the scheduler holds back fewer units of its shape than wait (`queued`: for tasks and
    actors, and for placement groups, one shape per unit it holds back, as its autoscaler reads
    them; None: not known). A task or actor whose lease is granted reads waiting, with no process
    yet, until its worker has started, and holds its CPUs meanwhile."""
    waiting: Counter = Counter()
    for demand in demands:
        waiting[demand.group, demand.shape] += demand.count
    for (group, shape), count in waiting.items():
        shapes = queued[group]
        if shapes is not None and sum(tuple(s.get(k, 0.0) for k in HELD) == shape for s in shapes) < count:
            return True
    return False


def queued_for_resources() -> dict[bool, list[dict[str, float]] | None]:
    """The resource shapes the scheduler of the cluster this process is connected to holds back
    for lack of resources, one per unit: tasks' and actors' under False, placement groups' under
    True (each group's bundles as one summed shape); None under both when this process is not
    connected or the GCS does not answer."""
    import ray
    from ray.exceptions import RayError

    unknown: dict[bool, list[dict[str, float]] | None] = {False: None, True: None}
    if not ray.is_initialized():
        return unknown
    from ray.autoscaler.v2.sdk import get_cluster_status

    try:
        demands = get_cluster_status(ray.get_runtime_context().gcs_address).resource_demands
    except (RayError, OSError) as error:  # the GCS did not answer: judge by the state API alone
        log.warning("the cluster's pending demands could not be read: %s", error)
        return unknown
    groups = [
        {k: sum(b.bundle.get(k, 0.0) * b.count for b in g.bundles_by_count) for k in HELD}
        for g in demands.placement_group_demand
    ]
    tasks = [dict(b.bundle) for d in demands.ray_task_actor_demand for b in d.bundles_by_count for _ in range(b.count)]
    return {False: tasks, True: groups}


def stuck(cluster: Cluster, submission_id: str) -> Stuck | None:
    """What a submitted job's work waits for, when the cluster cannot give it now (more than is
    free, all of it held back by the scheduler) and nothing of it runs or starts; None when it
    runs or gets it."""
    free, total = cluster_resources()
    queued = queued_for_resources()
    waiting = stuck_work(cluster, submission_id)
    demands = [] if launching(waiting, queued) else [d for d in waiting if not fits(d, free)]
    return Stuck(demands, free, total) if demands else None


def cluster_resources() -> tuple[dict[str, float], dict[str, float]]:
    """(free, total) resources of the cluster this process is connected to; empty when it is not."""
    import ray

    if not ray.is_initialized():
        return {}, {}
    return ray.available_resources(), ray.cluster_resources()
