"""API keys: make, hash, parse from headers, verify; stored hashed in NATS KV (store does I/O).

A key looks like `bsk_<key_id>.<secret>`. Only `sha256(key)` is stored, under `key_id`.
Accepted headers: `Authorization: Bearer <key>` and Baseten's `Authorization: Api-Key <key>`.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

from basalt.pb import deploy_pb2

PREFIX = "bsk_"


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


def record_for(key_id: str, key: str, name: str) -> deploy_pb2.ApiKeyRecord:
    return deploy_pb2.ApiKeyRecord(key_id=key_id, sha256=digest(key), name=name, created_ts=time.time())


def matches(record: deploy_pb2.ApiKeyRecord, key: str) -> bool:
    return hmac.compare_digest(record.sha256, digest(key))


async def create(nc, name: str) -> str:  # type: ignore[no-untyped-def]
    """Make a key, store its hash in the API-keys bucket, return the key (shown once)."""
    from basalt import bus, subjects

    bucket = await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET)
    key_id, key = make_key()
    await bucket.put(key_id, record_for(key_id, key, name).SerializeToString())
    return key


class KeyVerifier:
    """Checks keys against the API-keys bucket, caching records briefly (does I/O)."""

    def __init__(self, bucket, cache_s: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        self.bucket = bucket
        self.cache_s = cache_s
        self._cache: dict[str, tuple[float, deploy_pb2.ApiKeyRecord | None]] = {}

    async def verify(self, key: str | None) -> bool:
        if not key:
            return False
        key_id = key_id_of(key)
        if key_id is None:
            return False
        now = time.monotonic()
        hit = self._cache.get(key_id)
        if hit is None or now - hit[0] > self.cache_s:
            try:
                entry = await self.bucket.get(key_id)
                rec = deploy_pb2.ApiKeyRecord.FromString(entry.value) if entry.value else None
            except Exception:  # noqa: BLE001 - unreadable or gone: no such key (fail closed)
                rec = None
            hit = (now, rec)
            self._cache[key_id] = hit
        return hit[1] is not None and matches(hit[1], key)
