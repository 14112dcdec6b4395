"""The weights stream's writer side, and reading a node's cache record (does I/O). The
control plane and `basalt weights pull` ask a node's coldstart service for a revision through
here; the service (services/coldstart/main.py) consumes the stream."""

from __future__ import annotations

import time
import uuid

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import KeyNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.pb import deploy_pb2, weights_pb2
from basalt.weights import revision_key, valid_node

STREAM_MAX_AGE_S = 24 * 3600.0
DUPLICATE_WINDOW_S = 120.0


async def ensure_stream(js: JetStreamContext) -> None:
    """Create stream BASALT_WEIGHTS (file storage) when it does not exist."""
    try:
        await js.stream_info(subjects.WEIGHTS_STREAM)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=subjects.WEIGHTS_STREAM, subjects=[subjects.WEIGHTS_FETCH_ALL],
            storage=StorageType.FILE, max_age=STREAM_MAX_AGE_S,
            duplicate_window=DUPLICATE_WINDOW_S, num_replicas=bus.stream_replicas(),
        ))


async def request_fetch(nc: Client, node: str, source: deploy_pb2.WeightsSource,
                        replica_id: str = "", command_id: str = "") -> weights_pb2.WeightsFetch:
    """Publish a WeightsFetch for `node` (stored in the stream before this returns). The same
    `command_id` within two minutes is stored once."""
    if not valid_node(node):
        raise ValueError(f"node {node!r} is not a node name")
    js = nc.jetstream()
    await ensure_stream(js)
    cmd = weights_pb2.WeightsFetch(
        command_id=command_id or uuid.uuid4().hex, node=node, source=source,
        replica_id=replica_id, requested_ts=time.time())
    await js.publish(subjects.weights_fetch(node), cmd.SerializeToString(),
                     headers={"Nats-Msg-Id": cmd.command_id})
    return cmd


async def weights_bucket(nc: Client) -> KeyValue:
    return await bus.kv_bucket(nc, subjects.WEIGHTS_BUCKET)


async def node_record(kv: KeyValue, node: str) -> weights_pb2.NodeWeights | None:
    try:
        entry = await kv.get(node)
    except KeyNotFoundError:
        return None
    return weights_pb2.NodeWeights.FromString(entry.value) if entry.value else None


def find_revision(node: weights_pb2.NodeWeights | None,
                  source: deploy_pb2.WeightsSource) -> weights_pb2.WeightsRevision | None:
    if node is None:
        return None
    key = revision_key(source)
    return next((r for r in node.revisions if r.key == key), None)
