"""NATS connection and the shared JetStream KV buckets (does I/O)."""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError
from nats.js.kv import KeyValue

from basalt import subjects
from basalt.log import get_logger

log = get_logger(__name__)


async def connect(url: str, name: str) -> Client:
    """Connect with reconnects on; a service keeps running across a NATS restart."""

    async def on_error(e: Exception) -> None:
        log.warning("nats_error", error=str(e))

    return await nats.connect(
        url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=on_error
    )


async def kv_bucket(nc: Client, bucket: str, ttl_s: float | None = None) -> KeyValue:
    """Open a KV bucket, creating it when it does not exist yet."""
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s)
        return await js.create_key_value(cfg)


async def replicas_bucket(nc: Client) -> KeyValue:
    return await kv_bucket(nc, subjects.REPLICAS_BUCKET, ttl_s=subjects.REPLICAS_TTL_S)
