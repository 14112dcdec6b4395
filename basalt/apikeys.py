"""API keys: make, hash, parse from headers, verify; stored hashed in NATS KV (store does I/O).

A key looks like `bsk_<key_id>.<secret>`. Only `sha256(key)` is stored, under `key_id`.
Accepted headers: `Authorization: Bearer <key>` and Baseten's `Authorization: Api-Key <key>`.

Each key has one scope: INFERENCE (the router's doors) or MANAGEMENT (the deployments API,
which starts code); optionally a list of models it is limited to, an expiry, and (inference)
a request rate and concurrency limit. Only key administration (the NATS `admin` role) can
write the bucket; revoking deletes the record, refused everywhere within `cache_s`.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import OrderedDict

from google.protobuf.message import DecodeError

from basalt.pb import deploy_pb2

PREFIX = "bsk_"
INFERENCE = deploy_pb2.KEY_SCOPE_INFERENCE
MANAGEMENT = deploy_pb2.KEY_SCOPE_MANAGEMENT
SCOPES = {"inference": INFERENCE, "management": MANAGEMENT}
Record = deploy_pb2.ApiKeyRecord


def make_key() -> tuple[str, str]:
    """A new (key_id, key). Show the key once; store only its hash."""
    key_id = secrets.token_hex(6)
    return key_id, f"{PREFIX}{key_id}.{secrets.token_urlsafe(32)}"


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    if not key.startswith(PREFIX) or "." not in key:
        return None
    return key[len(PREFIX):].split(".", 1)[0] or None


def key_from_header(value: str | None) -> str | None:
    """The key in an Authorization header value, or None when there is none."""
    if not value:
        return None
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() in ("bearer", "api-key") and rest.strip():
        return rest.strip()
    return None


def record_for(key_id: str, key: str, name: str, scope: int = INFERENCE, *,
               models: list[str] | None = None, expires_ts: float = 0.0,
               rate_per_s: float = 0.0, max_concurrency: int = 0,
               now: float | None = None) -> Record:
    return Record(key_id=key_id, sha256=digest(key), name=name,
                  created_ts=time.time() if now is None else now, scope=deploy_pb2.KeyScope.ValueType(scope),
                  models=models or [], expires_ts=expires_ts, rate_per_s=rate_per_s,
                  max_concurrency=max_concurrency)


def matches(record: Record, key: str) -> bool:
    # As bytes: compare_digest refuses non-ASCII str, and a stored hash is data, not trusted.
    return hmac.compare_digest(record.sha256.encode(), digest(key).encode())


def allows(record: Record, scope: int, now: float) -> bool:
    """Whether a (matching) key's record admits a request of `scope` at wall time `now`."""
    return record.scope == scope and not (record.expires_ts and now >= record.expires_ts)


def allows_model(record: Record, model: str) -> bool:
    return not record.models or model in record.models


async def create(nc, name: str, scope: int = INFERENCE, **limits) -> str:  # type: ignore[no-untyped-def]
    """Make a key, store its hash in the API-keys bucket, return the key (shown once).
    `limits`: models, expires_ts, rate_per_s, max_concurrency (see `record_for`)."""
    from basalt import bus, subjects

    bucket = await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET)
    key_id, key = make_key()
    await bucket.put(key_id, record_for(key_id, key, name, scope, **limits).SerializeToString())
    return key


async def list_keys(nc) -> list[Record]:  # type: ignore[no-untyped-def]
    """Every key's record (hashes only), oldest first."""
    from basalt import bus, subjects

    bucket = await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET)
    out = []
    for value in (await bus.kv_items(bucket)).values():
        try:
            out.append(Record.FromString(value))
        except DecodeError:
            continue
    return sorted(out, key=lambda r: r.created_ts)


async def revoke(nc, key_id: str) -> bool:  # type: ignore[no-untyped-def]
    """Delete a key's record; False when there is none. Refused everywhere within the
    verifiers' cache time (5 s)."""
    from nats.js.errors import KeyDeletedError, KeyNotFoundError

    from basalt import bus, subjects

    if not well_formed_id(key_id):
        return False
    bucket = await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET)
    try:
        await bucket.get(key_id)
    except (KeyNotFoundError, KeyDeletedError):
        return False
    await bucket.delete(key_id)
    return True


class KeyStoreUnavailable(Exception):
    """The API-keys bucket cannot be read and this key was not verified recently: the caller
    answers 503 (an outage of the key store is not a bad key)."""

    def __init__(self, key_id: str, error: str) -> None:
        super().__init__(f"the API key store is unavailable ({error}); retry shortly")
        self.key_id = key_id
        self.error = error


_KEY_ID = re.compile(r"[0-9a-f]{12}")


def well_formed_id(key_id: str | None) -> bool:
    """Ids are what `make_key` makes: 12 lowercase hex digits. Others are never looked up."""
    return key_id is not None and _KEY_ID.fullmatch(key_id) is not None


class KeyVerifier:
    """Checks keys against the API-keys bucket (does I/O), with a bounded LRU cache of what
    the bucket said per key id: fresh for `cache_s`; while the bucket cannot be read, a key
    that verified within `outage_grace_s` keeps working, any other raises KeyStoreUnavailable.
    Malformed keys are refused without a lookup and never cached."""

    def __init__(self, bucket, cache_s: float = 5.0, max_entries: int = 10_000,  # type: ignore[no-untyped-def]
                 outage_grace_s: float = 300.0) -> None:
        self.bucket = bucket
        self.cache_s = cache_s
        self.max_entries = max_entries
        self.outage_grace_s = outage_grace_s
        self._cache: OrderedDict[str, tuple[float, deploy_pb2.ApiKeyRecord | None]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._cache)

    async def verify(self, key: str | None, scope: int = INFERENCE) -> Record | None:
        """The key's record when the key is valid, unexpired and of `scope`; else None."""
        rec = await self._record(key)
        if rec is None or key is None or not matches(rec, key):
            return None
        return rec if allows(rec, scope, time.time()) else None

    async def _record(self, key: str | None) -> Record | None:
        if not key:
            return None
        key_id = key_id_of(key)
        if key_id is None or not well_formed_id(key_id):
            return None
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is None or now - hit[0] > self.cache_s:
            try:
                rec = await self._lookup(key_id)
            except Exception as e:  # noqa: BLE001 - store unreachable: not a verdict on the key
                if hit is not None and hit[1] is not None and now - hit[0] <= self.outage_grace_s:
                    return hit[1]
                raise KeyStoreUnavailable(key_id, type(e).__name__) from None
            hit = (now, rec)
            self._remember(key_id, hit)
        return hit[1]

    async def _lookup(self, key_id: str) -> deploy_pb2.ApiKeyRecord | None:
        from nats.js.errors import KeyDeletedError, KeyNotFoundError

        try:
            entry = await self.bucket.get(key_id)
        except (KeyNotFoundError, KeyDeletedError):
            return None
        try:
            return deploy_pb2.ApiKeyRecord.FromString(entry.value) if entry.value else None
        except DecodeError:
            return None  # an unreadable record verifies nothing (fail closed)

    def _remember(self, key_id: str, hit: tuple[float, deploy_pb2.ApiKeyRecord | None]) -> None:
        self._cache[key_id] = hit
        self._cache.move_to_end(key_id)
        while len(self._cache) > self.max_entries:
            self._cache.popitem(last=False)
