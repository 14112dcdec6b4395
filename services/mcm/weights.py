"""The control plane's side of the node weight cache: read what each node holds, and ask a
node for a revision before a replica starts there, waiting until it is present (does I/O; the
estimate and the tier rule are in core/startcost.py)."""

from __future__ import annotations

import asyncio
import time

from nats.aio.client import Client
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2, weights_pb2
from basalt.weights import revision_key
from basalt.weightstream import find_revision, node_record, request_fetch, weights_bucket

from .core.startcost import Prefetched, outcome

log = get_logger(__name__)


class NoWeightCache(RuntimeError):
    """No coldstart service runs on the node a replica was placed on."""


class PrefetchFailed(RuntimeError):
    """The node's coldstart service could not make the revision present."""


class WeightsClient:
    def __init__(self, nc: Client, kv: KeyValue, poll_s: float = 0.2) -> None:
        self.nc, self.kv, self.poll_s = nc, kv, poll_s

    @classmethod
    async def open(cls, nc: Client) -> WeightsClient:
        return cls(nc, await weights_bucket(nc))

    async def nodes(self) -> dict[str, weights_pb2.NodeWeights]:
        out = {}
        for key, value in (await bus.kv_items(self.kv)).items():
            try:
                out[key] = weights_pb2.NodeWeights.FromString(value)
            except Exception:  # noqa: BLE001 - one bad record must not hide the others
                log.warning("node_weights_unreadable", node=key[:80])
        return out

    async def prefetch(self, node: str, source: deploy_pb2.WeightsSource, replica_id: str,
                       timeout_s: float) -> Prefetched:
        """Ask `node` for the revision and wait until it is present there."""
        key = revision_key(source)
        before = await node_record(self.kv, node)
        if before is None or time.time() - before.heartbeat_ts > subjects.WEIGHTS_STALE_S:
            raise NoWeightCache(f"no coldstart service on node {node!r} (no fresh record in "
                                f"bucket {subjects.WEIGHTS_BUCKET}): start `basalt coldstart "
                                f"--node {node}` there")
        cmd = await request_fetch(self.nc, node, source, replica_id,
                                  command_id=f"{replica_id}-{key}")
        log.info("weights_prefetch", node=node, key=key, replica_id=replica_id,
                 uri=source.uri, command_id=cmd.command_id)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            rec = await node_record(self.kv, node)
            if rec is None or time.time() - rec.heartbeat_ts > subjects.WEIGHTS_STALE_S:
                raise NoWeightCache(f"the coldstart service on node {node!r} stopped while "
                                    f"fetching {source.uri}")
            rev = find_revision(rec, source)
            done = outcome(rev, cmd.command_id)
            if done is not None and rev is not None:
                if done.error:
                    raise PrefetchFailed(f"node {node} could not fetch {source.uri}: {done.error}")
                return Prefetched(rev.path, key, int(done.fetched_bytes), done.tier, done.ts)
            await asyncio.sleep(self.poll_s)
        raise PrefetchFailed(f"node {node} did not make {source.uri} present in {timeout_s:.0f}s")
