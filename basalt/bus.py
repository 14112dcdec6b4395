"""NATS connection and the shared JetStream KV buckets (does I/O)."""

from __future__ import annotations

import nats
from nats.aio.client import Client
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
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


async def kv_items(bucket: KeyValue) -> dict[str, bytes]:
    """Every live key of a bucket with its value.

    Keys come from the stream's per-subject counts, not from nats-py's `KeyValue.keys()`,
    whose watcher can signal "no more keys" before the first one arrives and then returns
    an empty list for a full bucket (seen under load). Deleted and expired keys are absent.
    """
    prefix = bucket._pre  # "$KV.<bucket>."; nats-py keeps the names on the bucket
    info = await bucket._js.stream_info(bucket._stream, subjects_filter=f"{prefix}>")
    out: dict[str, bytes] = {}
    for subject in sorted(info.state.subjects or {}):
        key = subject[len(prefix):]
        try:
            entry = await bucket.get(key)
        except NotFoundError:  # deleted (a marker) or gone since the listing
            continue
        if entry.value:
            out[key] = entry.value
    return out
