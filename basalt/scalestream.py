"""The scale stream's writer side: create stream BASALT_SCALE and publish a `ScaleCommand`
on it (does I/O). The control plane's consumer (services/mcm/scale.py) applies them; the CLI,
the deployments API and the autoscaler publish them."""

from __future__ import annotations

import time
import uuid

from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import StorageType, StreamConfig
from nats.js.errors import NotFoundError

from basalt import bus, subjects
from basalt.pb import deploy_pb2

MAX_REPLICAS = 1000
# Commands older than this are dropped from the stream even if never applied.
STREAM_MAX_AGE_S = 7 * 24 * 3600.0
# JetStream drops a second publish with the same command id within this window.
DUPLICATE_WINDOW_S = 120.0


async def ensure_stream(js: JetStreamContext) -> None:
    """Create stream BASALT_SCALE (file storage) when it does not exist."""
    try:
        await js.stream_info(subjects.SCALE_STREAM)
    except NotFoundError:
        await js.add_stream(StreamConfig(
            name=subjects.SCALE_STREAM, subjects=[subjects.SCALE_ALL], storage=StorageType.FILE,
            max_age=STREAM_MAX_AGE_S, duplicate_window=DUPLICATE_WINDOW_S,
            num_replicas=bus.stream_replicas(),
        ))


def _subject_safe(deployment_id: str) -> bool:
    return bool(deployment_id) and not any(c in deployment_id for c in ".*> \t\r\n")


async def publish_scale(nc: Client, deployment_id: str, replicas: int, source: str, *,
                        command_id: str | None = None,
                        ts: float | None = None) -> deploy_pb2.ScaleCommand:
    """Publish a ScaleCommand (stored in the stream before this returns); returns it."""
    if not _subject_safe(deployment_id):
        raise ValueError(f"deployment id {deployment_id!r} cannot be a subject token")
    if not 0 <= replicas <= MAX_REPLICAS:
        raise ValueError(f"replicas must be within 0..{MAX_REPLICAS}, got {replicas}")
    js = nc.jetstream()
    await ensure_stream(js)
    # Stamped after the last await before the publish: commands from one process reach the
    # stream in the order of their timestamps, so none is skipped as older than the last.
    cmd = deploy_pb2.ScaleCommand(
        command_id=command_id or uuid.uuid4().hex, deployment_id=deployment_id,
        replicas=replicas, source=source, ts=time.time() if ts is None else ts,
    )
    await js.publish(subjects.scale(deployment_id), cmd.SerializeToString(),
                     headers={"Nats-Msg-Id": cmd.command_id})
    return cmd


