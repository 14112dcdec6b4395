"""A deployment's health as `basalt status`, the API and the dashboard show it: one state and
the reason for it (pure, no I/O; time comes in).

States, the first that holds wins:
- `inactive`: deactivated; nothing runs.
- `failed`: its replicas failed to start `MAX_FAILURES` times in a row; no more launches until
  its spec changes (a new `basalt deploy`) or it is activated again. The reason is the start
  phase and the first error line of the last failed replica.
- `unplaced`: short of replicas and no cluster can take one (the reason names each cluster and
  its rule, e.g. `no capacity: local (4 of 4 used, needs 1)`).
- `scaled_to_zero`: active, 0 desired (an autoscaled deployment at rest: a request wakes it).
- `rolling`: replicas at an older spec revision are being replaced.
- `starting`: fewer READY replicas than desired (with the last start failure, if any, and when
  the next launch is tried).
- `ok`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from basalt.pb import deploy_pb2, events_pb2

from .status import StartFailure

ACTIVE = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
READY = events_pb2.REPLICA_STATE_READY


@dataclass(slots=True, frozen=True)
class ControlState:
    """What the reconciler knows that records do not say: start failures and unplaced
    deployments (by deployment id), and the spec revision each of its replicas runs."""

    failures: Mapping[str, StartFailure] = field(default_factory=dict)
    unplaced: Mapping[str, str] = field(default_factory=dict)
    revisions: Mapping[str, str] = field(default_factory=dict)
    # Reconcile ticks finished so far (-1: no reconciler): a writer waits for the next one.
    ticks: int = -1


def health(rec: deploy_pb2.DeploymentRecord, replicas: Sequence[events_pb2.ReplicaRecord],
           revision: str, control: ControlState, now: float) -> dict[str, Any]:
    """The `health` object of a deployment view; `replicas` are this deployment's records and
    `revision` its current spec revision."""
    failure = control.failures.get(rec.id)
    out: dict[str, Any] = {
        "state": "ok", "reason": "", "failures": failure.count if failure else 0,
        "first_error": failure.first_error if failure else "",
        "phase": failure.phase if failure else "",
        "retry_at": None if failure is None or failure.given_up else failure.retry_at,
    }
    ready = sum(r.state == READY for r in replicas)
    old = [r.replica_id for r in replicas
           if (rv := control.revisions.get(r.replica_id, "")) and rv != revision]
    if rec.status != ACTIVE:
        out.update(state="inactive", reason="deactivated: no replicas run")
    elif failure is not None and failure.given_up:
        out.update(state="failed", reason=_failed_reason(failure))
    elif rec.id in control.unplaced and ready < rec.desired_replicas:
        out.update(state="unplaced", reason=control.unplaced[rec.id])
    elif rec.desired_replicas == 0 and not replicas:
        out.update(state="scaled_to_zero", reason="0 replicas wanted; a request wakes it")
    elif old:
        out.update(state="rolling", reason=f"{len(old)} replica(s) at an older revision "
                   f"being replaced one at a time; {ready} ready")
    elif ready < rec.desired_replicas:
        reason = f"{ready} of {rec.desired_replicas} ready"
        if failure is not None:
            wait = max(0.0, failure.retry_at - now)
            reason += (f"; {failure.count} start failure(s), next try in {wait:.0f}s: "
                       f"{_where(failure)}{failure.first_error}")
        out.update(state="starting", reason=reason)
    return out


def _where(f: StartFailure) -> str:
    return f"in {f.phase}: " if f.phase else ""


def _failed_reason(f: StartFailure) -> str:
    return (f"{f.count} replicas in a row failed to start {_where(f)}{f.first_error}; "
            "fix the deployment and deploy it again, or `basalt activate` to retry")
