"""NATS connection and the shared JetStream KV buckets (does I/O)."""

from __future__ import annotations

import asyncio
import os
import re
import ssl
from dataclasses import dataclass
from urllib.parse import urlsplit

import nats
import nkeys
from nats.aio.client import Client
from nats.errors import AuthorizationError
from nats.js.api import KeyValueConfig
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from basalt import natsauth, subjects
from basalt.log import get_logger
from basalt.secretfiles import read_secret

log = get_logger(__name__)


LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})
# How many NATS nodes keep each bucket and stream this process creates; `basalt up
# --nats-cluster 3` sets 3.
REPLICAS_ENV = "BASALT_NATS_REPLICAS"


_KV_KEY = re.compile(r"[-/_=.a-zA-Z0-9]+")


def valid_key(key: str) -> bool:
    """Whether `key` can name a JetStream KV entry (nats-py refuses others before any I/O)."""
    return bool(_KV_KEY.fullmatch(key)) and not key.startswith(".") and not key.endswith(".")


def stream_replicas() -> int:
    try:
        return max(1, min(5, int(os.environ.get(REPLICAS_ENV, "1"))))
    except ValueError:
        return 1


class NatsRefused(RuntimeError):
    """The NATS server refused to admit this client (no or wrong credentials)."""


class InsecureNats(RuntimeError):
    """Refused to talk to a NATS server off loopback without credentials and TLS."""


@dataclass(frozen=True, slots=True)
class NatsAuth:
    """How a service proves itself to NATS: an nkey seed file (`--nats-creds`), and TLS: the
    CA that signed the server's certificate, plus a client certificate where the server asks
    for one (mTLS). `insecure` allows plaintext or no credentials off loopback."""

    creds: str = ""
    tls_ca: str = ""
    tls_cert: str = ""
    tls_key: str = ""
    insecure: bool = False


def check_transport(url: str, auth: NatsAuth) -> None:
    """Refuse (InsecureNats) to talk to a server off loopback without credentials and TLS."""
    parts = [urlsplit(u.strip()) for u in url.split(",")]
    off_loopback = [p.hostname for p in parts if p.hostname not in LOOPBACK]
    if not off_loopback or auth.insecure:
        return
    if not auth.creds or not (auth.tls_ca or all(p.scheme == "tls" for p in parts)):
        raise InsecureNats(
            f"NATS at {off_loopback[0]} is off loopback: give --nats-creds and TLS "
            "(--nats-tls-ca, a tls:// URL), or --nats-insecure to accept plaintext")


def _tls(auth: NatsAuth) -> ssl.SSLContext | None:
    if not auth.tls_ca:
        return None
    ctx = ssl.create_default_context(cafile=auth.tls_ca)
    if auth.tls_cert:
        ctx.load_cert_chain(auth.tls_cert, auth.tls_key or None)
    return ctx


async def connect(url: str, name: str, auth: NatsAuth | None = None) -> Client:
    """Connect with reconnects on; a service keeps running across a NATS restart. With
    credentials, replies come to this user's own inbox (the only one it may read)."""
    auth = auth or NatsAuth()
    check_transport(url, auth)

    refused = asyncio.Event()

    async def on_error(e: Exception) -> None:
        if isinstance(e, AuthorizationError) or "Authorization Violation" in str(e):
            refused.set()
            log.error("nats_authorization_refused", url=url, creds_given=bool(auth.creds))
            return
        log.warning("nats_error", error=str(e))

    extra: dict = {}
    if auth.creds:
        seed = read_secret(auth.creds)
        public = nkeys.from_seed(bytearray(seed.encode())).public_key.decode()
        extra = {"nkeys_seed_str": seed, "inbox_prefix": natsauth.inbox_prefix(public)}
    tls = _tls(auth)
    if tls is not None:
        extra["tls"] = tls
    # Retried while the server is away (it may start after us); refused credentials are not
    # an outage: the first refusal before connecting ends the attempt.
    servers = [u.strip() for u in url.split(",") if u.strip()]
    connecting = asyncio.ensure_future(nats.connect(
        servers if len(servers) > 1 else url, name=name, max_reconnect_attempts=-1, reconnect_time_wait=0.5, error_cb=on_error,
        **extra,
    ))
    waiting = asyncio.ensure_future(refused.wait())
    await asyncio.wait([connecting, waiting], return_when=asyncio.FIRST_COMPLETED)
    waiting.cancel()
    if connecting.done():
        return connecting.result()
    connecting.cancel()
    raise NatsRefused(f"NATS at {url} refused this service's credentials"
                      + ("" if auth.creds else " (none given: --nats-creds)"))


async def kv_bucket(nc: Client, bucket: str, ttl_s: float | None = None) -> KeyValue:
    """Open a KV bucket, creating it when it does not exist yet."""
    js = nc.jetstream()
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        cfg = KeyValueConfig(bucket=bucket, history=1, ttl=ttl_s, replicas=stream_replicas())
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
