"""Routes requests to engine replicas by adapter residency: Ray Serve's router for the engine
deployment (`app.engine_options`), in each process that holds an engine handle (the ingress).

An adapter request carries its registry ref (`multiplexed_model_id`, `OpenAIServer.engine_for`). Its
holders are the replicas whose routing stats (`EngineServer.record_routing_stats`, every second) list
the ref, and the replica this router last sent the ref to within RECENT_S: stats lag, so a burst of
first requests for a cold adapter all go to one replica, which loads it once.

- Holders, one of them with fewer than `hot_queue_len` requests in flight: the holders first (Serve
  picks the least busy that accepts), the other replicas only if none accepts.
- No holder: the least busy replica first (then the one with fewest adapters, then by replica id, so
  that every ingress picks the same one); it becomes the holder at once.
- Every holder hot: all replicas as one, so the least busy gets it and the adapter spreads.
- Base requests: all replicas as one.

Each choice goes to the request it was made for (the base class's matching by request id; Serve's
FIFOMixin would hand it to the oldest waiting request, whatever its adapter).
"""

from __future__ import annotations

from ray.serve.request_router import PendingRequest, ReplicaID, RequestRouter, RunningReplica

HOT_QUEUE_LEN = 8  # requests in flight on every holder at which an adapter spreads to other replicas
RECENT_S = 10.0  # how long a replica counts as holding what was last sent to it, before its stats say so


def adapters_on(replica: RunningReplica) -> list[str]:
    return (replica.routing_stats or {}).get("adapters") or []


class AdapterAffinityRouter(RequestRouter):
    """Sends an adapter's requests to the replicas that hold it; see the module docstring."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.hot_queue_len = HOT_QUEUE_LEN
        self.last_sent: dict[str, tuple[ReplicaID, float]] = {}  # adapter ref -> replica, when

    def initialize_state(self, hot_queue_len: int = HOT_QUEUE_LEN, **kwargs) -> None:
        """The engine deployment's `request_router_kwargs`: `hot_queue_len` (default HOT_QUEUE_LEN)."""
        self.hot_queue_len = hot_queue_len

    def queue_len(self, replica: RunningReplica) -> int:
        """Requests in flight on the replica as this router last knew (0 when it does not know)."""
        return self.replica_queue_len_cache.get(replica.replica_id) or 0

    def cold_order(self, replica: RunningReplica) -> tuple:
        return self.queue_len(replica), len(adapters_on(replica)), replica.replica_id.unique_id

    def remember(self, ref: str, replica_id: ReplicaID) -> None:
        now = self._get_curr_time_s()
        self.last_sent = {r: sent for r, sent in self.last_sent.items() if now - sent[1] < RECENT_S}
        self.last_sent[ref] = (replica_id, now)

    def holders(self, ref: str, candidates: list[RunningReplica]) -> list[RunningReplica]:
        recent, when = self.last_sent.get(ref, (None, 0.0))
        recent = recent if self._get_curr_time_s() - when < RECENT_S else None
        return [r for r in candidates if ref in adapters_on(r) or r.replica_id == recent]

    async def choose_replicas(
        self, candidate_replicas: list[RunningReplica], pending_request: PendingRequest | None = None
    ) -> list[list[RunningReplica]]:
        ref = pending_request.metadata.multiplexed_model_id if pending_request else ""
        if not ref or not candidate_replicas:
            return [candidate_replicas]
        holders = self.holders(ref, candidate_replicas)
        others = [r for r in candidate_replicas if r not in holders]
        if any(self.queue_len(r) < self.hot_queue_len for r in holders):
            return [holders, others]
        if holders:  # hot everywhere it is loaded
            return [candidate_replicas]
        cold = sorted(candidate_replicas, key=self.cold_order)
        self.remember(ref, cold[0].replica_id)
        return [cold[:1], cold[1:]]

    def on_request_routed(self, pending_request: PendingRequest, replica_id: ReplicaID, result) -> None:
        """The replica that accepted an adapter request holds (or is loading) the adapter now."""
        if pending_request.metadata.multiplexed_model_id:
            self.remember(pending_request.metadata.multiplexed_model_id, replica_id)
