"""The engine router's choices (`serving/adapter_router.py`), without Ray: fake replicas that report
their adapters and requests in flight, and Serve's own pick within the ranks the router returns (the
least busy replica of the first rank with one that accepts)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from itertools import count

from ray.serve._private.common import DeploymentHandleSource, DeploymentID, RequestMetadata
from ray.serve.request_router import PendingRequest, ReplicaID

from rayft.serving.adapter_router import HOT_QUEUE_LEN, RECENT_S, AdapterAffinityRouter

ENGINE = DeploymentID("engine", "rayft")
REQUEST_IDS = count()


@dataclass(eq=False)
class Replica:
    """A running engine replica as the router sees it: its routing stats (as last polled) and its
    queue length (what it answers a probe with)."""

    name: str
    adapters: list[str] = field(default_factory=list)
    in_flight: int = 0
    max_ongoing_requests: int = 32
    multiplexed_model_ids: set = field(default_factory=set)  # Serve's own multiplexing: unused
    availability_zone: str | None = None

    @property
    def node_id(self) -> str:
        return self.name

    @property
    def replica_id(self) -> ReplicaID:
        return ReplicaID(self.name, ENGINE)

    @property
    def routing_stats(self) -> dict:
        return {"adapters": list(self.adapters), "running": self.in_flight}

    async def get_queue_len(self, deadline_s: float) -> int:
        return self.in_flight


class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def router_over(*replicas: Replica, clock: Clock | None = None, **kwargs) -> AdapterAffinityRouter:
    router = AdapterAffinityRouter(
        deployment_id=ENGINE,
        handle_source=DeploymentHandleSource.UNKNOWN,
        use_replica_queue_len_cache=True,
        get_curr_time_s=clock or Clock(),
    )
    router.initialize_state(**kwargs)
    router.update_replicas(list(replicas))
    for replica in replicas:
        router.replica_queue_len_cache.update(replica.replica_id, replica.in_flight)
    return router


def make_busy(router: AdapterAffinityRouter, replica: Replica, in_flight: int) -> None:
    """The replica has `in_flight` requests, and the router knows it."""
    replica.in_flight = in_flight
    router.replica_queue_len_cache.update(replica.replica_id, in_flight)


def request(ref: str) -> PendingRequest:
    n = str(next(REQUEST_IDS))
    return PendingRequest([], {}, RequestMetadata(request_id=n, internal_request_id=n, multiplexed_model_id=ref))


async def send(router: AdapterAffinityRouter, ref: str, answered: bool = True) -> Replica:
    """Route one request as Serve does: the router's ranks, Serve's pick, the queue length cache
    counting it; `answered`: the replica accepted it (`on_request_routed`) and it finished."""
    pending = request(ref)
    for rank in await router.choose_replicas(router._replicas_list, pending):
        replica = await router._select_from_candidate_replicas(rank, 0)
        if replica is not None:
            break
    else:
        raise AssertionError("no replica accepted")
    router.on_send_request(replica.replica_id)
    replica.in_flight += 1
    if answered:
        router.on_request_routed(pending, replica.replica_id, None)
        router.decrement_queue_len_cache(replica.replica_id)
        replica.in_flight -= 1
    return replica


def run(scenario) -> None:
    asyncio.run(scenario())


def test_an_adapter_goes_to_the_replica_that_holds_it_even_when_another_is_less_busy():
    async def scenario():
        holder, idle = Replica("a", adapters=["support:1"], in_flight=3), Replica("b")
        router = router_over(holder, idle)
        assert await router.choose_replicas([holder, idle], request("support:1")) == [[holder], [idle]]
        assert [await send(router, "support:1") for _ in range(20)] == [holder] * 20

    run(scenario)


def test_a_burst_for_a_cold_adapter_goes_to_one_replica_the_least_busy_with_fewest_adapters():
    async def scenario():
        crowded, empty, busy = Replica("a", adapters=["x:1", "y:1"]), Replica("b"), Replica("c", in_flight=2)
        router = router_over(crowded, empty, busy)
        # None of these is answered before the next is routed, and no stats arrive meanwhile.
        assert [await send(router, "support:1", answered=False) for _ in range(6)] == [empty] * 6

    run(scenario)


def test_the_replica_last_sent_an_adapter_holds_it_until_its_stats_would_say_so():
    async def scenario():
        clock = Clock()
        first, second = Replica("a"), Replica("b")
        router = router_over(first, second, clock=clock)
        assert await send(router, "support:1") is first
        make_busy(router, first, 5)  # busier now, and its stats do not list the adapter yet
        assert await send(router, "support:1") is first
        clock.now += RECENT_S + 1  # stats long since polled, without it: first no longer holds it
        make_busy(router, first, 5)
        make_busy(router, second, 0)
        assert await send(router, "support:1") is second

    run(scenario)


def test_a_hot_adapter_spreads_to_other_replicas_and_they_share_it():
    async def scenario():
        holder, other = Replica("a", adapters=["support:1"], in_flight=HOT_QUEUE_LEN), Replica("b", in_flight=1)
        router = router_over(holder, other)
        assert await router.choose_replicas([holder, other], request("support:1")) == [[holder, other]]
        assert await send(router, "support:1", answered=True) is other
        make_busy(router, holder, HOT_QUEUE_LEN - 1)  # no longer hot: both hold it now
        assert await router.choose_replicas([holder, other], request("support:1")) == [[holder, other], []]

    run(scenario)


def test_the_hot_threshold_is_a_router_kwarg_and_a_full_holder_overflows_whatever_it_is():
    async def scenario():
        holder, other = Replica("a", adapters=["support:1"], in_flight=2), Replica("b")
        assert await send(router_over(holder, other, hot_queue_len=2), "support:1") is other
        holder.in_flight = holder.max_ongoing_requests  # rejects: the next rank gets it
        assert await send(router_over(holder, other, hot_queue_len=1000), "support:1") is other

    run(scenario)


def test_base_requests_go_to_the_least_busy_of_all_replicas():
    async def scenario():
        holder, idle = Replica("a", adapters=["support:1"], in_flight=2), Replica("b")
        router = router_over(holder, idle)
        assert await router.choose_replicas([holder, idle], request("")) == [[holder, idle]]
        assert await send(router, "") is idle

    run(scenario)
