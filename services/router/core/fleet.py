"""The router's picture of the replicas: records, load reports, its own in-flight work (no I/O).

Time comes in as `now` (monotonic seconds on the router's clock). A replica whose record was
not refreshed within `ttl_s` is dropped, whether or not the KV bucket told us it expired.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from basalt.ids import ReplicaId
from basalt.pb import events_pb2
from services.router.core.failover import backoff_until
from services.router.core.types import Candidate

READY = events_pb2.REPLICA_STATE_READY


@dataclass(slots=True)
class _Inflight:
    routed_at: float
    blocks: int
    started: bool = False


@dataclass(slots=True)
class ReplicaEntry:
    record: events_pb2.ReplicaRecord
    seen_at: float
    load: events_pb2.LoadReport | None = None
    load_at: float = -1.0
    inflight: dict[str, _Inflight] = field(default_factory=dict)
    failures: int = 0
    skip_until: float = 0.0


class Fleet:
    def __init__(self, ttl_s: float = 15.0, failure_backoff_s: float = 5.0) -> None:
        self.ttl_s = ttl_s
        self.failure_backoff_s = failure_backoff_s
        self._replicas: dict[str, ReplicaEntry] = {}

    def __contains__(self, replica_id: str) -> bool:
        return replica_id in self._replicas

    def get(self, replica_id: str) -> ReplicaEntry | None:
        return self._replicas.get(replica_id)

    def upsert(self, record: events_pb2.ReplicaRecord, now: float) -> bool:
        """Store a record; True when it is a new replica or a restarted one (new epoch)."""
        state = self._replicas.get(record.replica_id)
        if state is None or state.record.epoch != record.epoch:
            self._replicas[record.replica_id] = ReplicaEntry(record, now)
            return True
        state.record = record
        state.seen_at = now
        return False

    def remove(self, replica_id: str) -> bool:
        return self._replicas.pop(replica_id, None) is not None

    def expire(self, now: float) -> list[str]:
        gone = [rid for rid, s in self._replicas.items() if now - s.seen_at > self.ttl_s]
        for rid in gone:
            del self._replicas[rid]
        return gone

    def update_load(self, report: events_pb2.LoadReport, now: float) -> None:
        state = self._replicas.get(report.replica_id)
        if state is not None:
            state.load = report
            state.load_at = now

    def routed(self, replica_id: str, request_id: str, blocks: int, now: float) -> None:
        state = self._replicas.get(replica_id)
        if state is not None:
            state.inflight[request_id] = _Inflight(now, blocks)

    def started(self, replica_id: str, request_id: str) -> None:
        state = self._replicas.get(replica_id)
        if state is not None and request_id in state.inflight:
            state.inflight[request_id].started = True

    def finished(self, replica_id: str, request_id: str, ok: bool, now: float) -> None:
        state = self._replicas.get(replica_id)
        if state is None:
            return
        state.inflight.pop(request_id, None)
        state.failures = 0 if ok else state.failures + 1
        state.skip_until = backoff_until(state.failures, now, self.failure_backoff_s)

    def deployment_of(self, replica_id: str) -> str | None:
        state = self._replicas.get(replica_id)
        return state.record.deployment if state else None

    def max_model_len(self, deployment_id: str) -> int:
        """The longest prompt + output any replica of the deployment accepts (0: unknown)."""
        return max((s.record.max_model_len for s in self._replicas.values()
                    if s.record.deployment == deployment_id), default=0)

    def candidates(self, deployment_id: str, now: float) -> list[Candidate]:
        """READY replicas of a deployment, with load = last report + work routed since."""
        out = []
        for state in self._replicas.values():
            rec = state.record
            if rec.deployment != deployment_id or rec.state != READY:
                continue
            out.append(self._view(state))
        return out

    def _view(self, state: ReplicaEntry) -> Candidate:
        rec, load = state.record, state.load
        newer = [f for f in state.inflight.values() if f.routed_at > state.load_at]
        active = (load.kv_blocks_active if load else 0) + sum(f.blocks for f in newer)
        waiting = (load.num_waiting if load else 0) + sum(1 for f in newer if not f.started)
        running = (load.num_running if load else 0) + sum(1 for f in newer if f.started)
        return Candidate(
            replica_id=ReplicaId(rec.replica_id),
            region=rec.region,
            zone=rec.zone,
            loras=frozenset(rec.lora_adapters),
            kv_block_size=rec.kv_block_size or 16,
            kv_blocks_total=(load.kv_blocks_total if load else 0) or rec.kv_blocks_total,
            kv_blocks_active=active,
            num_running=running,
            num_waiting=waiting,
            healthy=True,
            skip_until=state.skip_until,
        )

    def all_ids(self) -> list[str]:
        return list(self._replicas)
