"""Scale commands: a durable JetStream consumer applying `ScaleCommand`s to deployments, and
`publish_scale` for the CLI and the autoscaler (does I/O; `decide` is the pure rule, in core/scaling.py).

Delivery is at-least-once: a command is acked only after the deployment write (and the
applied marker) succeeded, nak'ed for redelivery when a write fails, and the stream keeps it
while mcm is down. Applying is idempotent: bucket `basalt_scale_applied` keeps, per
deployment, the last command applied; a command with that id, or older than it by
(`ts`, `command_id`), is acked and skipped, so neither a redelivery nor a late older command
overrides a newer one. The deployment is written before the marker: a crash between the two
re-applies the same absolute count on redelivery, which changes nothing unless the API set
another count in that instant.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2
from basalt.scalestream import ensure_stream

from .core.scaling import MAX_REPLICAS, ScaleVerdict, decide
from .store import RevisionMismatch, Store

log = get_logger(__name__)
_CAS_TRIES = 5

# Last ScaleCommand applied per deployment, key = deployment id.
APPLIED_BUCKET = subjects.SCALE_APPLIED_BUCKET
DURABLE = "mcm"
async def last_applied(applied: KeyValue, deployment_id: str
                       ) -> tuple[deploy_pb2.ScaleCommand | None, int | None]:
    """The last command applied to a deployment and the marker's revision (None, None: none)."""
    try:
        entry = await applied.get(deployment_id)
    except KeyNotFoundError:
        return None, None
    cmd = deploy_pb2.ScaleCommand.FromString(entry.value) if entry.value else None
    return cmd, entry.revision


class ScaleConsumer:
    """Applies scale commands from the durable consumer `mcm` until `request_stop`."""

    def __init__(self, js: JetStreamContext, store: Store, applied: KeyValue, *,
                 on_applied: Callable[[deploy_pb2.ScaleCommand], None] | None = None,
                 retry_delay_s: float = 1.0) -> None:
        self.js = js
        self.store = store
        self.applied = applied
        self.on_applied = on_applied
        self.retry_delay_s = retry_delay_s
        self._sub: JetStreamContext.PullSubscription | None = None
        self._closing = asyncio.Event()

    @classmethod
    async def open(cls, nc: Client, store: Store, **kw: object) -> ScaleConsumer:
        js = nc.jetstream()
        await ensure_stream(js)
        applied = await bus.kv_bucket(nc, APPLIED_BUCKET)
        return cls(js, store, applied, **kw)  # type: ignore[arg-type]

    async def _subscribe(self) -> JetStreamContext.PullSubscription:
        if self._sub is None:
            self._sub = await self.js.pull_subscribe(
                subjects.SCALE_ALL, durable=DURABLE, stream=subjects.SCALE_STREAM,
                config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT,
                                      deliver_policy=DeliverPolicy.ALL, ack_wait=30.0))
        return self._sub

    async def run(self) -> None:
        """Fetch and apply until `request_stop` (within about a second)."""
        try:
            await self._fetch_and_apply()
        finally:
            if self._sub is not None:
                with contextlib.suppress(Exception):
                    await self._sub.unsubscribe()
                self._sub = None

    async def _fetch_and_apply(self) -> None:
        while not self._closing.is_set():
            try:
                sub = await self._subscribe()
                msgs = await sub.fetch(batch=16, timeout=1.0)
            except TimeoutError:
                # Nothing to fetch in the second (nats-py raises its own TimeoutError or the
                # builtin one, its base): not an error.
                continue
            except Exception as e:  # noqa: BLE001 - NATS down or restarting: retry
                log.warning("scale_fetch_failed", error=str(e) or type(e).__name__)
                await asyncio.sleep(self.retry_delay_s)
                continue
            for msg in msgs:
                await self.handle(msg)

    def request_stop(self) -> None:
        self._closing.set()

    async def handle(self, msg: Msg) -> ScaleVerdict | None:
        """Apply one delivered command and ack it; nak it when a write fails."""
        try:
            cmd = deploy_pb2.ScaleCommand.FromString(msg.data)
        except DecodeError:
            log.error("scale_command_unreadable", subject=msg.subject, size=len(msg.data))
            await msg.term()
            return None
        if not bus.valid_key(cmd.deployment_id):  # no deployment can have it: never applies
            log.error("scale_command_invalid", subject=msg.subject,
                      deployment=cmd.deployment_id[:80])
            await msg.term()
            return None
        try:
            outcome = await self.apply(cmd)
        except Exception as e:  # noqa: BLE001 - any failed write: redeliver
            log.warning("scale_command_retry", command_id=cmd.command_id,
                        deployment=cmd.deployment_id, error=str(e))
            await msg.nak(delay=self.retry_delay_s)
            return None
        await msg.ack()
        log.info("scale_command", command_id=cmd.command_id, deployment=cmd.deployment_id,
                 replicas=cmd.replicas, source=cmd.source, outcome=outcome.value)
        if outcome is ScaleVerdict.APPLIED and self.on_applied is not None:
            self.on_applied(cmd)
        return outcome

    async def apply(self, cmd: deploy_pb2.ScaleCommand) -> ScaleVerdict:
        """Set the deployment's desired replicas unless `decide` says not; raises when a write
        fails (the caller naks and the command comes again)."""
        last, marker_rev = await last_applied(self.applied, cmd.deployment_id)
        skip = (ScaleVerdict.INVALID if cmd.replicas > MAX_REPLICAS
                else decide(cmd, last, now=time.time()))
        if skip is not None:
            return skip
        outcome = await self._write_desired(cmd)
        if outcome in (ScaleVerdict.APPLIED, ScaleVerdict.UNCHANGED):
            if marker_rev is None:
                await self.applied.create(cmd.deployment_id, cmd.SerializeToString())
            else:  # a concurrent writer makes this fail: nak, and decide again on redelivery
                await self.applied.update(cmd.deployment_id, cmd.SerializeToString(),
                                          last=marker_rev)
        return outcome

    async def _write_desired(self, cmd: deploy_pb2.ScaleCommand) -> ScaleVerdict:
        for _ in range(_CAS_TRIES):
            found = await self.store.get(cmd.deployment_id)
            if found is None:
                return ScaleVerdict.NO_DEPLOYMENT
            rec = found.record
            if rec.status != deploy_pb2.DEPLOYMENT_STATUS_ACTIVE:
                return ScaleVerdict.INACTIVE
            if rec.desired_replicas == cmd.replicas:
                return ScaleVerdict.UNCHANGED
            rec.desired_replicas = cmd.replicas
            try:
                await self.store.update(rec, found.revision)
                return ScaleVerdict.APPLIED
            except RevisionMismatch:
                continue
        raise RevisionMismatch(cmd.deployment_id)
