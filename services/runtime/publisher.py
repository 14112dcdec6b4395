"""Publishes a replica's KV events, load reports and replica record on NATS (does I/O).

With the replica's credential (`token`), each message is signed (basalt/replicaauth.py) so
consumers can tell it comes from this replica."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

from nats.aio.client import Client
from nats.js.kv import KeyValue

from basalt import subjects
from basalt.kvevents import KvEvent, KvEventBatchData, batch_to_proto
from basalt.log import get_logger
from basalt.pb import events_pb2
from basalt.replicaauth import Signed, sign
from services.runtime.core.engine import Engine
from services.runtime.core.latency import LatencyWindow, Percentiles
from services.runtime.core.mirror import KvMirror

from . import metrics

log = get_logger(__name__)


def _signed(token: str, msg: Signed) -> bytes:
    if token:
        sign(token, msg)
    return msg.SerializeToString()


class KvEventPublisher:
    """Numbers the engine's KV event batches (seq +1 per batch) and publishes them.

    The mirror is updated in the same step as `seq`, so a dump is always consistent with
    the last sequence number it reports."""

    def __init__(self, nc: Client, replica_id: str, epoch: str, token: str = "") -> None:
        self.nc = nc
        self.token = token
        self.replica_id = replica_id
        self.epoch = epoch
        self.subject = subjects.kv_events(replica_id)
        self.mirror = KvMirror()
        self.seq = 0

    async def publish(self, events: list[KvEvent]) -> None:
        if not events:
            return
        self.mirror.apply(events)
        self.seq += 1
        batch = KvEventBatchData(self.replica_id, self.seq, time.time(), self.epoch, events)
        await self.nc.publish(self.subject, _signed(self.token, batch_to_proto(batch)))

    async def run(self, engine: Engine) -> None:
        async for events in engine.kv_events():
            try:
                await self.publish(events)
            except Exception as e:  # noqa: BLE001 - a NATS hiccup must not stop the replica
                log.warning("kv_publish_failed", error=str(e), seq=self.seq)

    def dump(self) -> tuple[int, list]:
        return self.seq, self.mirror.dump()


def _summary(p: Percentiles) -> events_pb2.LatencySummary:
    return events_pb2.LatencySummary(
        p50_ms=p.p50_ms, p90_ms=p.p90_ms, p99_ms=p.p99_ms, count=p.count
    )


class LoadReporter:
    """Publishes a LoadReport every `interval` seconds."""

    def __init__(
        self, nc: Client, replica_id: str, deployment: str, engine: Engine, interval: float,
        model_name: str = "", token: str = "",
    ) -> None:
        self.nc = nc
        self.token = token
        self.replica_id = replica_id
        self.deployment = deployment
        self.engine = engine
        self.interval = interval
        labels = {"model": model_name, "replica": replica_id}
        # The /metrics gauges follow the same stats the load report carries.
        self._gauges = (metrics.RUNNING.labels(**labels), metrics.WAITING.labels(**labels),
                        metrics.KV_USAGE.labels(**labels))
        self.ttft = LatencyWindow()
        self.itl = LatencyWindow()
        self.generated_tokens = 0

    def report(self) -> events_pb2.LoadReport:
        now = time.monotonic()
        stats = self.engine.stats()
        running, waiting, kv_usage = self._gauges
        running.set(stats.num_running)
        waiting.set(stats.num_waiting)
        kv_usage.set(stats.kv_usage)
        return events_pb2.LoadReport(
            replica_id=self.replica_id,
            deployment=self.deployment,
            ts=time.time(),
            num_running=stats.num_running,
            num_waiting=stats.num_waiting,
            kv_usage=stats.kv_usage,
            kv_blocks_total=stats.kv_blocks_total,
            kv_blocks_active=stats.kv_blocks_active,
            ttft=_summary(self.ttft.summary(now)),
            itl=_summary(self.itl.summary(now)),
            generated_tokens_total=self.generated_tokens,
        )

    async def run(self) -> None:
        subject = subjects.load(self.replica_id)
        while True:
            try:
                await self.nc.publish(subject, _signed(self.token, self.report()))
            except Exception as e:  # noqa: BLE001 - a NATS hiccup must not stop the reports
                log.warning("load_report_failed", error=str(e))
            await asyncio.sleep(self.interval)


class Heartbeat:
    """Keeps this replica's record fresh in the replicas KV bucket."""

    def __init__(
        self, bucket: KeyValue, record: Callable[[], events_pb2.ReplicaRecord], interval: float,
        token: str = "",
    ) -> None:
        self.bucket = bucket
        self.token = token
        self.record = record
        self.interval = interval

    async def beat(self) -> None:
        rec = self.record()
        rec.heartbeat_ts = time.time()
        await self.bucket.put(rec.replica_id, _signed(self.token, rec))

    async def run(self) -> None:
        while True:
            try:
                await self.beat()
            except Exception as e:  # noqa: BLE001 - a NATS hiccup must not stop the heartbeat
                log.warning("heartbeat_failed", error=str(e))
            await asyncio.sleep(self.interval)

    async def deregister(self, replica_id: str) -> None:
        await self.bucket.delete(replica_id)
