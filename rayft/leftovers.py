"""Placement groups nobody can use any more, freed before a stage asks the cluster for resources.

Ray removes a placement group when both its creator job and its creator actor are dead (unless the
group is detached). A job stopped while Ray Train starts its worker group can still leave one
behind: the controller asks the GCS for the group and dies before the GCS registers it, so the
group is registered after both deaths were handled and nothing ever removes it. It holds its CPUs
for good, and on a small head the next stage waits forever (seen when the fine-tuning service
paused a job during that start; docs/fine-tuning-api.md).

So every stage that connects to an existing cluster (`runtime.ensure_ray`) first removes the
groups that Ray's own rule says should be gone: not detached, not removed, creator job dead, and
creator actor (when an actor made it) dead. A detached actor's group, a live job's group and
Serve's detached groups are never touched.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Group:
    """What the GCS records of one placement group that decides whether it is a leftover."""

    id: str
    state: str
    detached: bool
    creator_job: str
    creator_actor: str | None  # None when the job's driver made it
    cpus: float


def leftovers(groups: list[Group], dead_jobs: set[str], live_actors: set[str]) -> list[Group]:
    """The groups Ray's lifetime rule would have removed: their creators are gone."""
    return [
        group
        for group in groups
        if group.state != "REMOVED"
        and not group.detached
        and group.creator_job in dead_jobs
        and (group.creator_actor is None or group.creator_actor not in live_actors)
    ]


def free_leftover_placement_groups() -> list[Group]:
    """Remove the cluster's leftover groups (this process is connected to it); what was removed."""
    import ray
    from ray._private.state import state
    from ray.core.generated import gcs_pb2
    from ray.util.placement_group import PlacementGroup

    accessor = state._connect_and_get_accessor()
    groups = [group_of(gcs_pb2.PlacementGroupTableData.FromString(row)) for row in accessor.get_placement_group_table()]
    if not any(g.state != "REMOVED" and not g.detached for g in groups):
        return []
    dead_jobs = {job["JobID"] for job in state.job_table() if job["IsDead"]}
    creators = {g.creator_actor for g in leftovers(groups, dead_jobs, set()) if g.creator_actor}
    live_actors = {a for a in creators if state.actor_table(a).get("State", "DEAD") != "DEAD"}  # one lookup each
    freed = leftovers(groups, dead_jobs, live_actors)
    for group in freed:
        ray.util.remove_placement_group(PlacementGroup(ray.PlacementGroupID.from_hex(group.id)))
        logger.warning(
            "freed placement group %s (%g CPU): its job %s had ended and Ray had not removed it",
            group.id,
            group.cpus,
            group.creator_job,
        )
    return freed


def group_of(row) -> Group:
    """One `PlacementGroupTableData` of the GCS as a `Group`."""
    from ray.core.generated import gcs_pb2

    actor = row.creator_actor_id.hex()
    return Group(
        id=row.placement_group_id.hex(),
        state=gcs_pb2.PlacementGroupTableData.PlacementGroupState.Name(row.state),
        detached=row.is_detached,
        creator_job=row.creator_job_id.hex(),
        creator_actor=None if not actor or set(actor) <= {"f"} else actor,
        cpus=sum(bundle.unit_resources.get("CPU", 0.0) for bundle in row.bundles),
    )
