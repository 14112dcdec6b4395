"""One request's access-log entry and the fields of its line; the outcome of an error (no I/O).

The HTTP door fills an `AccessEntry` as the request goes (the key check, the handler, the
dispatcher's `RequestRecord`) and writes one line when the response has been sent. Where the
request reached a replica, the line's outcome, tokens and times are the record's own fields,
so the access log and the `basalt.requests.*` record never disagree. The line carries no
prompt and no key, only the key's id.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from basalt.pb import deploy_pb2

from .errors import (
    AuthUnavailable,
    BadRequest,
    Forbidden,
    ModelNotFound,
    NoReplica,
    QueueFull,
    RateLimited,
    ReplicaFailed,
    RouterError,
    Unauthorized,
)

ACCESS_EVENT = "access"

# A RequestRecord's outcomes (proto/basalt/pb/deploy.proto) and the refusals before one.
OK = "ok"
CANCELLED = "cancelled"
CLIENT_ERROR = "client_error"
UNAUTHORIZED = "unauthorized"
RATE_LIMITED = "rate_limited"
REJECTED = "rejected"
TIMEOUT = "timeout"
UNAVAILABLE = "unavailable"
REPLICA_ERROR = "replica_error"
ERROR = "error"


def outcome_of(e: RouterError) -> str:
    """The outcome a request refused or failed with `e` is logged and recorded with."""
    if isinstance(e, BadRequest | ModelNotFound):
        return CLIENT_ERROR
    if isinstance(e, Unauthorized | Forbidden):
        return UNAUTHORIZED
    if isinstance(e, RateLimited):
        return RATE_LIMITED
    if isinstance(e, QueueFull):  # and its kin: Rejected, ParkedFull
        return REJECTED
    if isinstance(e, NoReplica):
        return TIMEOUT
    if isinstance(e, AuthUnavailable):
        return UNAVAILABLE
    if isinstance(e, ReplicaFailed):
        return REPLICA_ERROR
    return ERROR


def outcome_of_status(status: int) -> str:
    """The outcome of a response no `RouterError` explains (the framework's own 404, 405,
    413, or an unexpected 500)."""
    if status < 400:
        return OK
    return CLIENT_ERROR if status < 500 else ERROR


@dataclass(slots=True)
class AccessEntry:
    """What the door knows about one request so far. `status` is 200 unless a refusal set it
    (each error path of the door sets it; a stream that fails after its first chunk is still
    200, with the record's outcome)."""

    request_id: str
    method: str
    route: str
    arrived: float  # perf_counter at the door
    status: int = 200
    outcome: str = ""
    error: str | None = None  # the error's OpenAI code (or type), for a refusal
    key_id: str | None = None
    model: str | None = None
    deployment: str | None = None
    replica: str | None = None
    stream: bool = False
    record: deploy_pb2.RequestRecord | None = None

    def refused(self, status: int, e: RouterError | None = None, code: str | None = None) -> None:
        """The request is answered `status` for `e` (or for the framework's `code`)."""
        self.status = status
        if e is not None:
            self.outcome = outcome_of(e)
            self.error = e.code or e.type
        else:
            self.outcome = outcome_of_status(status)
            self.error = code


def _ms(x: float) -> float:
    return round(x, 2)


def access_fields(entry: AccessEntry, total_ms: float) -> dict[str, Any]:
    """The access line's fields (the same keys on every line; None where not known).

    Tokens are nested under `tokens` (prompt, cached, output): the common lib's log redacts
    any top-level key that contains "token"."""
    rec = entry.record
    if rec is not None:
        outcome = rec.outcome
        tokens: dict[str, int] | None = {"prompt": rec.prompt_tokens,
                                         "cached": rec.cached_tokens,
                                         "output": rec.completion_tokens}
        replica = rec.replica_id or entry.replica
        deployment: str | None = rec.deployment_id
        queue_ms: float | None = _ms(rec.queue_wait_ms)
        ttft_ms: float | None = _ms(rec.ttft_ms) if rec.ttft_ms else None
        lora = rec.lora_name or None
    else:
        outcome = entry.outcome or outcome_of_status(entry.status)
        tokens = None
        replica, deployment = entry.replica or None, entry.deployment
        queue_ms = ttft_ms = None
        lora = None
    return {
        "request_id": entry.request_id, "method": entry.method, "route": entry.route,
        "status": entry.status, "outcome": outcome, "error": entry.error,
        "model": entry.model, "deployment": deployment, "replica": replica, "lora": lora,
        "key_id": entry.key_id, "stream": entry.stream, "tokens": tokens,
        "queue_ms": queue_ms, "ttft_ms": ttft_ms, "total_ms": _ms(total_ms),
    }
