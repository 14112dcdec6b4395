"""Each deployment's demand as the router sees it, for the autoscaler: requests parked,
queued and in flight, their tokens, arrivals, time-averaged over each report interval (no I/O;
`now` is the router's monotonic clock).

A request is *parked* while its deployment has no ready replica, *queued* while every replica
is busy, *in flight* once sent to a replica. Averages integrate the counts over time, so a
burst that comes and goes within one interval still counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum


class Phase(Enum):
    PARKED = "parked"
    QUEUED = "queued"
    IN_FLIGHT = "in_flight"


@dataclass(slots=True)
class _Request:
    phase: Phase
    tokens: int


@dataclass(slots=True)
class DemandFigures:
    """One deployment over one interval."""

    in_flight: int
    parked: int
    queued: int
    arrivals: int
    avg_concurrency: float
    avg_tokens: float
    interval_s: float
    prompt_tokens: int
    completion_tokens: int


@dataclass(slots=True)
class _Deployment:
    since: float
    requests: dict[str, _Request] = field(default_factory=dict)
    last: float = 0.0  # time of the last change (the integrals run up to it)
    conc_area: float = 0.0
    token_area: float = 0.0
    arrivals: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    last_wake: float = float("-inf")

    def advance(self, now: float) -> None:
        dt = max(0.0, now - self.last)
        self.conc_area += dt * len(self.requests)
        self.token_area += dt * sum(r.tokens for r in self.requests.values())
        self.last = max(self.last, now)


class DemandBook:
    def __init__(self, wake_interval_s: float = 1.0) -> None:
        self.wake_interval_s = wake_interval_s
        self._deps: dict[str, _Deployment] = {}

    def _dep(self, deployment_id: str, now: float) -> _Deployment:
        dep = self._deps.get(deployment_id)
        if dep is None:
            dep = self._deps[deployment_id] = _Deployment(since=now, last=now)
        dep.advance(now)
        return dep

    def arrive(self, deployment_id: str, request_id: str, prompt_tokens: int, now: float) -> None:
        dep = self._dep(deployment_id, now)
        dep.requests[request_id] = _Request(Phase.QUEUED, prompt_tokens)
        dep.arrivals += 1
        dep.prompt_tokens += prompt_tokens

    def phase(self, deployment_id: str, request_id: str, phase: Phase, now: float) -> None:
        dep = self._dep(deployment_id, now)
        if (req := dep.requests.get(request_id)) is not None:
            req.phase = phase

    def generated(self, deployment_id: str, request_id: str, tokens: int, now: float) -> None:
        dep = self._dep(deployment_id, now)
        dep.completion_tokens += tokens
        if (req := dep.requests.get(request_id)) is not None:
            req.tokens += tokens

    def done(self, deployment_id: str, request_id: str, now: float) -> None:
        self._dep(deployment_id, now).requests.pop(request_id, None)

    def should_wake(self, deployment_id: str, now: float) -> bool:
        """Whether to send a wake now (at most one per deployment per `wake_interval_s`)."""
        dep = self._dep(deployment_id, now)
        if now - dep.last_wake < self.wake_interval_s:
            return False
        dep.last_wake = now
        return True

    def parked(self, deployment_id: str) -> int:
        dep = self._deps.get(deployment_id)
        return sum(r.phase is Phase.PARKED for r in dep.requests.values()) if dep else 0

    def report(self, deployment_id: str, now: float) -> DemandFigures:
        """The interval since the last report (or the first arrival), then a new interval."""
        dep = self._dep(deployment_id, now)
        span = max(now - dep.since, 1e-9)
        count = {p: 0 for p in Phase}
        for r in dep.requests.values():
            count[r.phase] += 1
        out = DemandFigures(
            in_flight=count[Phase.IN_FLIGHT], parked=count[Phase.PARKED],
            queued=count[Phase.QUEUED], arrivals=dep.arrivals,
            avg_concurrency=dep.conc_area / span, avg_tokens=dep.token_area / span,
            interval_s=span, prompt_tokens=dep.prompt_tokens,
            completion_tokens=dep.completion_tokens,
        )
        dep.since, dep.conc_area, dep.token_area = now, 0.0, 0.0
        dep.arrivals = dep.prompt_tokens = dep.completion_tokens = 0
        return out

    def forget(self, deployment_id: str) -> None:
        self._deps.pop(deployment_id, None)
