"""Everything the autoscaler reads from NATS, kept current, and turned into one tick's inputs
(does I/O: subscriptions and KV watches; the assembly rules are in core/signals.py).

Nothing here outlives the process: a restarted autoscaler rebuilds it from the buckets (read
whole at start) and from the routers' reports within one window.
"""

from __future__ import annotations

import asyncio
import time
from collections import defaultdict, deque
from collections.abc import Callable

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2, events_pb2
from basalt.replicaauth import verify

from .core.planner import DeploymentInput
from .core.settings import Settings
from .core.signals import Tick, cold_start_s, combine, latency_of

log = get_logger(__name__)
DELETED = ("DEL", "PURGE")
ACTIVE = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
# Finished requests whose latency counts toward the observed p90s.
LATENCY_WINDOW_S = 20.0
# Cold-start times kept per deployment (replica records vanish with their replicas).
COLD_STARTS_KEPT = 16


class Inputs:
    def __init__(self, nc: Client, secret: bytes = b"") -> None:
        self.nc = nc
        self.secret = secret
        self.deployments: dict[str, deploy_pb2.DeploymentRecord] = {}
        self.replicas: dict[str, events_pb2.ReplicaRecord] = {}
        self.applied: dict[str, deploy_pb2.ScaleCommand] = {}
        self.demand: dict[str, dict[str, deploy_pb2.DemandReport]] = defaultdict(dict)
        self.requests: dict[str, deque[tuple[float, deploy_pb2.RequestRecord]]] = defaultdict(deque)
        self.cold_starts: dict[str, deque[float]] = defaultdict(lambda: deque(maxlen=COLD_STARTS_KEPT))
        self._wakes: set[str] = set()
        self.on_wake: Callable[[str], None] | None = None
        self._tasks: list[asyncio.Task] = []

    async def start(self) -> None:
        buckets = [
            (await bus.kv_bucket(self.nc, subjects.DEPLOYMENTS_BUCKET), self._on_deployment),
            (await bus.replicas_bucket(self.nc), self._on_replica),
            (await bus.kv_bucket(self.nc, subjects.SCALE_APPLIED_BUCKET), self._on_applied),
        ]
        ready = [asyncio.Event() for _ in buckets]
        for (kv, handle), event in zip(buckets, ready, strict=True):
            self._tasks.append(asyncio.create_task(self._watch(kv, handle, event)))
        await self.nc.subscribe(subjects.DEMAND_ALL, cb=self._on_demand)
        await self.nc.subscribe(subjects.REQUESTS_ALL, cb=self._on_request)
        await self.nc.subscribe(subjects.WAKE_ALL, cb=self._on_wake)
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), timeout=10)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()

    async def _watch(self, kv: KeyValue, handle: Callable[[str, bytes | None], None],
                     ready: asyncio.Event) -> None:
        while True:
            try:
                async for entry in await kv.watchall():
                    if entry is None:
                        ready.set()
                        continue
                    try:
                        handle(entry.key, None if entry.operation in DELETED else entry.value)
                    except Exception as e:  # noqa: BLE001 - one bad entry must not stop the watch
                        log.warning("bad_kv_entry", key=entry.key, error=str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - NATS restarting: watch again
                log.warning("kv_watch_restart", error=str(e))
                await asyncio.sleep(1.0)

    # -- handlers ------------------------------------------------------------------------

    def _on_deployment(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.deployments.pop(key, None)
        else:
            self.deployments[key] = deploy_pb2.DeploymentRecord.FromString(value)

    def _on_replica(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.replicas.pop(key, None)
            return
        rec = events_pb2.ReplicaRecord.FromString(value)
        if rec.replica_id != key or (self.secret and not verify(self.secret, key, rec)):
            log.warning("unauthentic_replica_record", replica=key[:80])
            return
        old = self.replicas.get(key)
        if rec.ready_ts and rec.started_ts and (old is None or not old.ready_ts):
            self.cold_starts[rec.deployment].append(rec.ready_ts - rec.started_ts)
        self.replicas[key] = rec

    def _on_applied(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.applied.pop(key, None)
        else:
            self.applied[key] = deploy_pb2.ScaleCommand.FromString(value)

    async def _on_demand(self, msg: Msg) -> None:
        try:
            rep = deploy_pb2.DemandReport.FromString(msg.data)
        except Exception:  # noqa: BLE001 - unreadable: dropped
            return
        if msg.subject == subjects.demand(rep.deployment_id) and rep.router_id:
            self.demand[rep.deployment_id][rep.router_id] = rep

    async def _on_request(self, msg: Msg) -> None:
        try:
            rec = deploy_pb2.RequestRecord.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        self.requests[rec.deployment_id].append((time.time(), rec))

    async def _on_wake(self, msg: Msg) -> None:
        try:
            wake = deploy_pb2.WakeRequest.FromString(msg.data)
        except Exception:  # noqa: BLE001
            return
        if msg.subject != subjects.wake(wake.deployment_id):
            return
        self._wakes.add(wake.deployment_id)
        if self.on_wake is not None:
            self.on_wake(wake.deployment_id)

    # -- one tick's inputs ---------------------------------------------------------------

    def autoscaled(self) -> list[deploy_pb2.DeploymentRecord]:
        """Active deployments that have autoscaling settings (the others keep a fixed count)."""
        return [d for d in self.deployments.values()
                if d.status == ACTIVE and d.spec.HasField("autoscaling")]

    def ready_count(self, deployment_id: str) -> int:
        return sum(r.deployment == deployment_id and r.state == events_pb2.REPLICA_STATE_READY
                   for r in self.replicas.values())

    def tick_inputs(self, now: float) -> dict[str, DeploymentInput]:
        """The inputs of every autoscaled deployment at wall time `now`; consumes the wakes."""
        wakes, self._wakes = self._wakes, set()
        out = {}
        for dep in self.autoscaled():
            reqs = self.requests[dep.id]
            while reqs and reqs[0][0] < now - LATENCY_WINDOW_S:
                reqs.popleft()
            mine = [r for r in self.replicas.values() if r.deployment == dep.id]
            starting = sum(r.state == events_pb2.REPLICA_STATE_LOADING for r in mine)
            measured = list(self.cold_starts[dep.id]) or None
            cold = (sorted(measured)[len(measured) // 2] if measured else cold_start_s(mine))
            tick = Tick(
                now=now, sample=combine(self.demand[dep.id].values(), now),
                ready=self.ready_count(dep.id), starting=starting, cold_start_s=cold,
                wake=dep.id in wakes, latency=latency_of(r for _, r in reqs),
            )
            last = self.applied.get(dep.id)
            manual = last is not None and last.source != "autoscaler"
            out[dep.id] = DeploymentInput(Settings.from_proto(dep.spec.autoscaling), tick,
                                          dep.desired_replicas, manual)
        return out
