"""Per-replica credentials (no I/O).

The control plane and the router share one platform secret. From it each replica's
credential is derived, `token = HMAC-SHA256(secret, replica_id)`; the control plane hands a
replica its token when it launches it (an environment variable, never argv), so:

- the runtime's gRPC server answers only a caller that sends `authorization: Bearer <token>`
  (the router and the control plane can compute it; nobody else can);
- the runtime signs what it publishes (its replica record, KV-event batches, load reports)
  with its token, and a consumer holding the secret refuses a message not signed by the
  replica it names. A NATS permission can say "runtimes publish replica records"; only this
  can say "this record comes from the replica it is about".

Rotating the secret: write a new one, restart the control plane and the router; replicas
started before keep the old token and are refused, so roll them (see README, Security).
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Protocol

SIGNATURE_BYTES = 32


class Signed(Protocol):
    """A protobuf message with a `bytes signature` field."""

    signature: bytes

    def SerializeToString(self, *, deterministic: bool = ...) -> bytes: ...


def replica_token(secret: bytes, replica_id: str) -> str:
    """The credential of one replica: hex HMAC of its id under the platform secret."""
    return hmac.new(secret, replica_id.encode(), hashlib.sha256).hexdigest()


def _mac(token: str, msg: Signed) -> bytes:
    msg.signature = b""
    body = msg.SerializeToString(deterministic=True)
    return hmac.new(token.encode(), body, hashlib.sha256).digest()


def sign(token: str, msg: Signed) -> None:
    """Set `msg.signature` (in place) to the MAC of the message under `token`."""
    msg.signature = _mac(token, msg)


def verify(secret: bytes, replica_id: str, msg: Signed) -> bool:
    """Whether `msg` was signed by replica `replica_id`. The signature field is left as it was."""
    given = bytes(msg.signature)
    if len(given) != SIGNATURE_BYTES or not replica_id:
        return False
    try:
        want = _mac(replica_token(secret, replica_id), msg)
    finally:
        msg.signature = given
    return hmac.compare_digest(given, want)


def bearer(token: str) -> str:
    return f"Bearer {token}"


def token_from_metadata(value: str | None) -> str | None:
    """The token in an `authorization` metadata value, or None when absent or malformed."""
    if not value or not value.startswith("Bearer "):
        return None
    token = value[len("Bearer "):]
    return token if 0 < len(token) <= 128 else None


def token_matches(expected: str, given: str | None) -> bool:
    return given is not None and hmac.compare_digest(expected.encode(), given.encode())
