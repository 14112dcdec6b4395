"""The router's call rules (core/failover.py): one failover rule for generate and predict,
queue admission and timeout, replica backoff (no NATS, no gRPC)."""

from __future__ import annotations

import pytest

from services.router.core.failover import (
    DEFAULT_QUEUE_TIMEOUT_S,
    Fault,
    Next,
    admits,
    after_failure,
    backoff_until,
    classify,
    queue_timeout_s,
    why_unserved,
)


@pytest.mark.parametrize(("code", "fault"), [
    ("INVALID_ARGUMENT", Fault.REQUEST),
    ("OUT_OF_RANGE", Fault.REQUEST),
    ("INTERNAL", Fault.ANSWERED),
    ("UNAVAILABLE", Fault.REPLICA),
    ("DEADLINE_EXCEEDED", Fault.REPLICA),
    ("NOT_FOUND", Fault.REPLICA),
])
def test_classify(code: str, fault: Fault) -> None:
    assert classify(code) is fault


def test_a_bad_request_is_answered_400_and_never_held_against_the_replica() -> None:
    for started in (False, True):
        v = after_failure("INVALID_ARGUMENT", started=started)
        assert (v.next, v.replica_fault) == (Next.BAD_REQUEST, False)


def test_an_error_the_replica_answered_is_not_retried_nor_a_replica_fault() -> None:
    # e.g. the model's predict() raised: elsewhere it would raise again, and one such
    # request must not put every replica into backoff.
    v = after_failure("INTERNAL", started=False)
    assert (v.next, v.replica_fault) == (Next.FAIL, False)


@pytest.mark.parametrize("code", ["UNAVAILABLE", "UNKNOWN", "CANCELLED", "RESOURCE_EXHAUSTED"])
def test_an_unreachable_replica_is_a_fault_and_retried_before_the_first_token(code: str) -> None:
    v = after_failure(code, started=False)
    assert (v.next, v.replica_fault) == (Next.RETRY, True)


def test_nothing_is_retried_once_the_stream_started() -> None:
    v = after_failure("UNAVAILABLE", started=True)
    assert (v.next, v.replica_fault) == (Next.FAIL, True)


def test_a_code_that_no_retry_can_fix_fails_at_once() -> None:
    v = after_failure("UNIMPLEMENTED", started=False)
    assert (v.next, v.replica_fault) == (Next.FAIL, True)


def test_backoff_grows_with_consecutive_failures_up_to_six_steps() -> None:
    assert backoff_until(0, now=100.0, base_s=5.0) == 0.0
    assert backoff_until(1, now=100.0, base_s=5.0) == 105.0
    assert backoff_until(3, now=100.0, base_s=5.0) == 115.0
    assert backoff_until(6, now=100.0, base_s=5.0) == backoff_until(50, now=100.0, base_s=5.0) == 130.0


def test_queue_admits_below_its_limit_only() -> None:
    assert admits(0, 1) and admits(63, 64)
    assert not admits(64, 64) and not admits(0, 0)


def test_queue_timeout_is_the_deployments_or_the_default() -> None:
    assert queue_timeout_s(2.5) == 2.5
    assert queue_timeout_s(0.0) == DEFAULT_QUEUE_TIMEOUT_S


def test_why_unserved() -> None:
    assert why_unserved(0) == "none ready"
    assert why_unserved(3) == "all busy"


def test_a_message_over_grpcs_size_limit_is_the_requests_fault() -> None:
    details = "Sent message larger than max (5242880 vs. 4194304)"
    assert classify("RESOURCE_EXHAUSTED", details) is Fault.REQUEST
    v = after_failure("RESOURCE_EXHAUSTED", started=False, details=details)
    assert (v.next, v.replica_fault) == (Next.BAD_REQUEST, False)
    assert classify("RESOURCE_EXHAUSTED", "replica overloaded") is Fault.REPLICA
