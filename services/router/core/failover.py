"""The router's rules for a call to a replica, pure: the queue's admission and timeout, what a
failed call means, whether to try another replica, and the backoff of a failing one (no I/O).

One rule for `generate` and `predict`. A call ends with a gRPC status, passed here by its
name (`"UNAVAILABLE"`), so this module needs no grpc:

- the request's own fault (`INVALID_ARGUMENT`, `OUT_OF_RANGE`, or a message over gRPC's size
  limit): answered 400, never retried, never held against the replica;
- the replica answered that this request failed there (`INTERNAL`: the engine or the model
  raised): answered 502, not retried (the same request would fail the same way elsewhere),
  not held against the replica, so one bad request cannot put every replica into backoff;
- the replica could not serve (`UNAVAILABLE`, `UNKNOWN`, `DEADLINE_EXCEEDED`, `CANCELLED`,
  `ABORTED`, `RESOURCE_EXHAUSTED`): a replica fault; retried on another replica while nothing
  was streamed yet, up to `MAX_ATTEMPTS` replicas;
- anything else (`NOT_FOUND`, `UNIMPLEMENTED`, ...): a replica fault, not retried.

After the first token (or the first predict output) nothing is retried: the stream ends with
an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

MAX_ATTEMPTS = 3
DEFAULT_QUEUE_TIMEOUT_S = 30.0
# A failing replica is skipped for base × consecutive failures, at most this many times base.
MAX_BACKOFF_STEPS = 6

REQUEST_FAULT_CODES = frozenset({"INVALID_ARGUMENT", "OUT_OF_RANGE"})
ANSWERED_CODES = frozenset({"INTERNAL"})
RETRYABLE_CODES = frozenset({
    "UNAVAILABLE", "UNKNOWN", "DEADLINE_EXCEEDED", "CANCELLED", "ABORTED", "RESOURCE_EXHAUSTED",
})


class Fault(Enum):
    REQUEST = "request"  # the request is bad: 400
    ANSWERED = "answered"  # the replica ran it and it failed there: 502
    REPLICA = "replica"  # the replica could not serve it


class Next(Enum):
    BAD_REQUEST = "bad_request"  # answer 400
    RETRY = "retry"  # try another replica
    FAIL = "fail"  # end the request (or its stream) with a replica error


@dataclass(frozen=True, slots=True)
class Verdict:
    next: Next
    # Held against the replica (it is skipped for a backoff).
    replica_fault: bool


def classify(code: str, details: str = "") -> Fault:
    """What a call that ended with gRPC status `code` (its name) says about whom. gRPC's own
    refusal of a message over its size limit (RESOURCE_EXHAUSTED "... larger than max ...")
    is the request's fault: every replica would refuse it."""
    if code in REQUEST_FAULT_CODES or (code == "RESOURCE_EXHAUSTED" and "larger than max" in details):
        return Fault.REQUEST
    if code in ANSWERED_CODES:
        return Fault.ANSWERED
    return Fault.REPLICA


def after_failure(code: str, *, started: bool, details: str = "") -> Verdict:
    """What to do after a call failed with `code`; `started` when tokens (or predict outputs)
    had reached the client already. The caller stops after MAX_ATTEMPTS replicas (503)."""
    fault = classify(code, details)
    if fault is Fault.REQUEST:
        return Verdict(Next.BAD_REQUEST, replica_fault=False)
    if fault is Fault.ANSWERED:
        return Verdict(Next.FAIL, replica_fault=False)
    retry = not started and code in RETRYABLE_CODES
    return Verdict(Next.RETRY if retry else Next.FAIL, replica_fault=True)


def backoff_until(consecutive_failures: int, now: float, base_s: float) -> float:
    """Until when a replica with that many consecutive failures is skipped (0: never)."""
    if consecutive_failures <= 0:
        return 0.0
    return now + base_s * min(consecutive_failures, MAX_BACKOFF_STEPS)


def admits(waiting: int, limit: int) -> bool:
    """Whether a deployment's queue, `waiting` long, takes one more request."""
    return waiting < limit


def queue_timeout_s(configured_s: float) -> float:
    """How long a request waits for a replica (the deployment's setting, else the default)."""
    return configured_s if configured_s > 0 else DEFAULT_QUEUE_TIMEOUT_S


def why_unserved(candidates: int) -> str:
    """The reason given when a queued request times out."""
    return "none ready" if candidates == 0 else "all busy"
