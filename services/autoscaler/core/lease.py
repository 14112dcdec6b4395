"""Who may act: the leader lease's rule (no I/O; time as an argument).

One record under key `leader` in bucket `basalt_autoscaler_lease`, written only by
compare-and-set on its revision. A process may write it when it holds it already or when the
holder's lease has expired; it acts only while its own lease is unexpired by its clock, less a
margin, so an old leader stops before a successor may start.
"""

from __future__ import annotations

from basalt.pb import deploy_pb2

# The leader stops acting this long before its lease's expiry (clock drift, a slow tick).
SAFETY_MARGIN_S = 0.5


def may_take(current: deploy_pb2.AutoscalerLease | None, holder: str, now: float) -> bool:
    """Whether `holder` may write the lease at `now` (renew, or take an expired one)."""
    return current is None or current.holder == holder or current.expires_ts <= now


def acting_until(renewed_at: float, ttl_s: float) -> float:
    """Until when a lease renewed at `renewed_at` lets its holder act."""
    return renewed_at + ttl_s - SAFETY_MARGIN_S
