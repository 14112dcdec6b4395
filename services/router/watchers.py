"""Feeds the router's state from NATS: replica records, load, KV events, deployments (does I/O)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.ids import ReplicaId
from basalt.kvevents import KvEventBatchData, batch_from_proto, stored_from_proto
from basalt.log import get_logger
from basalt.pb import deploy_pb2, events_pb2, runtime_pb2
from basalt.replicaauth import Signed, verify
from services.router.core.deployments import DeploymentTable
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex

from . import metrics
from .dispatch import Channels

log = get_logger(__name__)
DELETED = ("DEL", "PURGE")


def _state_name(state: int) -> str:
    """A replica state's name; a number for a state this router does not know (a newer
    runtime's), which it never routes to."""
    try:
        return events_pb2.ReplicaState.Name(state)
    except ValueError:
        return str(state)


class StateWatcher:
    """Keeps fleet, index and deployment table current; `changed()` wakes queued requests."""

    def __init__(
        self, nc: Client, fleet: Fleet, index: PrefixIndex, table: DeploymentTable,
        channels: Channels, changed: Callable[[], None], secret: bytes = b"",
        on_deployment: Callable[[deploy_pb2.DeploymentRecord], None] | None = None,
    ) -> None:
        self.nc = nc
        self.secret = secret
        self.fleet = fleet
        self.index = index
        self.table = table
        self.channels = channels
        self.changed = changed
        # Called with each deployment put (the router loads its tokenizer before a request).
        self.on_deployment = on_deployment
        self._tasks: list[asyncio.Task] = []
        self._pending: set[asyncio.Task] = set()
        self._dumping: set[ReplicaId] = set()
        # Batches that arrive while a replica's dump is in flight, applied after it.
        self._held: dict[ReplicaId, list[KvEventBatchData]] = {}
        self.synced = asyncio.Event()

    async def start(self) -> None:
        replicas = await bus.replicas_bucket(self.nc)
        deployments = await bus.kv_bucket(self.nc, subjects.DEPLOYMENTS_BUCKET)
        environments = await bus.kv_bucket(self.nc, subjects.ENVIRONMENTS_BUCKET)
        await self.nc.subscribe(subjects.LOAD_ALL, cb=self._on_load)
        await self.nc.subscribe(subjects.KV_EVENTS_ALL, cb=self._on_kv)
        ready = [asyncio.Event() for _ in range(3)]
        self._tasks += [
            asyncio.create_task(self._watch(replicas, self._on_replica, ready[0])),
            asyncio.create_task(self._watch(deployments, self._on_deployment, ready[1])),
            asyncio.create_task(self._watch(environments, self._on_environment, ready[2])),
            asyncio.create_task(self._expire_loop()),
        ]
        await asyncio.wait_for(asyncio.gather(*(e.wait() for e in ready)), timeout=10)
        self.synced.set()

    def _background(self, coro) -> None:  # type: ignore[no-untyped-def]
        """Run a one-off task, holding a reference so it is not collected mid-flight."""
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def stop(self) -> None:
        for t in (*self._tasks, *self._pending):  # one-off tasks too: dumps, channel warm-ups
            t.cancel()

    async def _watch(self, bucket: KeyValue, handle: Callable, ready: asyncio.Event) -> None:
        while True:
            try:
                watcher = await bucket.watchall()
                async for entry in watcher:
                    if entry is None:
                        ready.set()
                        continue
                    try:
                        handle(entry.key, None if entry.operation in DELETED else entry.value)
                    except Exception as e:  # noqa: BLE001 - one bad entry must not stop the watch
                        log.warning("bad_kv_entry", bucket=bucket._name, key=entry.key, error=str(e))
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - NATS restarting: watch again
                log.warning("kv_watch_restart", error=str(e))
                await asyncio.sleep(1.0)

    def _on_replica(self, key: str, value: bytes | None) -> None:
        if value is None:
            self._forget(ReplicaId(key))
            return
        rec = events_pb2.ReplicaRecord.FromString(value)
        if not self._authentic(rec.replica_id, rec, key == rec.replica_id, "replica record"):
            return
        if self.fleet.upsert(rec, time.monotonic()):
            log.info("replica_seen", replica=rec.replica_id, deployment=rec.deployment,
                     state=_state_name(rec.state))
            self._request_dump(ReplicaId(rec.replica_id))
            if rec.state == events_pb2.REPLICA_STATE_READY and self.channels.warm_on_sight:
                # connected before its first request
                self._background(self.channels.warm(rec.grpc_address, rec.replica_id))
        self.changed()

    def _authentic(self, replica_id: str, msg: Signed, placed_right: bool, what: str) -> bool:
        """Whether `msg` comes from the replica it names: found under that replica's key or
        subject (`placed_right`) and, with the platform secret, signed with its credential.
        Else it is counted and dropped: a forged record must not route a prompt anywhere."""
        ok = placed_right and (not self.secret or verify(self.secret, replica_id, msg))
        if not ok:
            metrics.REFUSED_MESSAGES.labels(kind=what).inc()
            log.warning("unauthentic_message_dropped", kind=what, replica=replica_id[:80])
        return ok

    def _forget(self, replica_id: ReplicaId) -> None:
        state = self.fleet.get(replica_id)
        if state is not None:
            self._background(self.channels.drop(state.record.grpc_address))
        self.fleet.remove(replica_id)
        self.index.remove_replica(replica_id)
        log.info("replica_gone", replica=replica_id)
        self.changed()

    def _on_deployment(self, key: str, value: bytes | None) -> None:
        if value is None:
            self.table.remove_deployment(key)
        else:
            dep = deploy_pb2.DeploymentRecord.FromString(value)
            self.table.put_deployment(dep)
            if self.on_deployment is not None:
                self.on_deployment(dep)
        self.changed()

    def _on_environment(self, key: str, value: bytes | None) -> None:
        if value is None:
            model, _, env = key.rpartition(".")
            self.table.remove_environment(model, env)
        else:
            self.table.put_environment(deploy_pb2.EnvironmentRecord.FromString(value))
        self.changed()

    async def _on_load(self, msg) -> None:
        try:
            report = events_pb2.LoadReport.FromString(msg.data)
            if not self._authentic(report.replica_id, report,
                                   msg.subject == subjects.load(report.replica_id), "load report"):
                return
            self.fleet.update_load(report, time.monotonic())
        except Exception as e:  # noqa: BLE001 - a bad report is dropped, not fatal
            log.warning("bad_load_report", error=str(e))
            return
        self.changed()

    async def _on_kv(self, msg) -> None:
        try:
            proto = events_pb2.KvEventBatch.FromString(msg.data)
            if not self._authentic(proto.replica_id, proto,
                                   msg.subject == subjects.kv_events(proto.replica_id),
                                   "KV-event batch"):
                return
            batch = batch_from_proto(proto)
        except Exception as e:  # noqa: BLE001 - a bad batch is dropped, not fatal
            log.warning("bad_kv_batch", subject=msg.subject, error=str(e))
            return
        replica_id = ReplicaId(batch.replica_id)
        if replica_id not in self.fleet:
            return  # not registered (yet): its record's arrival triggers a dump
        if replica_id in self._dumping:
            self._held.setdefault(replica_id, []).append(batch)
            return
        result = self.index.apply(batch)
        if result.need_dump:
            self._request_dump(replica_id)

    def _request_dump(self, replica_id: ReplicaId) -> None:
        if replica_id not in self._dumping:
            self._dumping.add(replica_id)
            self._background(self._dump(replica_id))

    async def _dump(self, replica_id: ReplicaId) -> None:
        try:
            state = self.fleet.get(replica_id)
            if state is None or not state.record.grpc_address:
                return
            stub = self.channels.stub(state.record.grpc_address, replica_id)
            dump = await stub.DumpKvState(runtime_pb2.DumpKvStateRequest(), timeout=10)
            self.index.apply_dump(
                replica_id, dump.epoch, dump.seq, [stored_from_proto(b) for b in dump.blocks]
            )
            metrics.KV_DUMPS.inc()
            log.info("kv_dump_applied", replica=replica_id, blocks=len(dump.blocks), seq=dump.seq)
        except Exception as e:  # noqa: BLE001 - the next gap or record asks again
            log.warning("kv_dump_failed", replica=replica_id, error=str(e))
        finally:
            self._dumping.discard(replica_id)
            for batch in self._held.pop(replica_id, []):
                self.index.apply(batch)  # batches the dump already reflects are ignored

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            for rid in self.fleet.expire(time.monotonic()):
                self.index.remove_replica(ReplicaId(rid))
                log.info("replica_expired", replica=rid)
                self.changed()
