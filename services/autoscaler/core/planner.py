"""Every deployment's decision at one tick, and which scale commands to send:
`Planner.on_tick(now, inputs) -> effects` (no I/O; the shape of Dynamo's planner state machine).

Which wins, the autoscaler or a manual scale (`basalt scale`, the API): the autoscaler sends a
command when its own decision changes. A manual count then stands until the next change of
decision. When the deployment's count drifts from the decision for another reason (activation,
a promotion, a settings patch: not a scale command), the autoscaler sets it back, at most once
per `RESEND_S`. Requests parked at a deployment manually set to zero override that count.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from basalt.pb import deploy_pb2

from .decide import Decision, State, decide
from .settings import Settings
from .signals import Tick

# The least time between two commands for the same count (a command not applied yet).
RESEND_S = 5.0


@dataclass(frozen=True, slots=True)
class DeploymentInput:
    settings: Settings
    tick: Tick
    current: int  # the deployment's desired replicas as stored now
    manual: bool = False  # the last scale command applied came from a person, not the autoscaler


@dataclass(frozen=True, slots=True)
class ScaleTo:
    """Effect: send a ScaleCommand (source autoscaler)."""

    deployment_id: str
    replicas: int
    reason: str
    detail: str


@dataclass(slots=True)
class _Book:
    state: State = field(default_factory=State)
    published: int | None = None
    published_at: float = float("-inf")
    last: Decision | None = None


class Planner:
    def __init__(self) -> None:
        self._books: dict[str, _Book] = {}

    def on_tick(self, now: float, inputs: Mapping[str, DeploymentInput]) -> list[ScaleTo]:
        """Decide for each deployment in `inputs`; forget the ones not in it."""
        for gone in set(self._books) - set(inputs):
            del self._books[gone]
        effects = []
        for dep_id, inp in sorted(inputs.items()):
            book = self._books.setdefault(dep_id, _Book())
            if book.state.desired is None:
                book.state.desired = inp.current
            d = book.last = decide(inp.settings, book.state, inp.tick)
            changed = d.desired != book.published
            # Requests wait at a deployment a person set to zero: they win over that count.
            stranded = inp.current == 0 < d.desired and (inp.tick.wake or inp.tick.sample.parked > 0)
            drifted = (d.desired != inp.current and (not inp.manual or stranded)
                       and now - book.published_at >= RESEND_S)
            if changed or drifted:
                if changed and book.published is None and d.desired == inp.current:
                    book.published = d.desired  # first tick, nothing to change
                    continue
                book.published, book.published_at = d.desired, now
                effects.append(ScaleTo(dep_id, d.desired, d.reason, d.detail))
        return effects

    def last(self, deployment_id: str) -> Decision | None:
        book = self._books.get(deployment_id)
        return book.last if book else None

    def snapshot(self, deployment_id: str, holder: str, now: float, ready: int
                 ) -> deploy_pb2.AutoscalerDecision | None:
        """What a successor needs to go on (the decision, the delay's memory, panic)."""
        book = self._books.get(deployment_id)
        if book is None or book.last is None:
            return None
        st, d = book.state, book.last
        return deploy_pb2.AutoscalerDecision(
            deployment_id=deployment_id, desired=d.desired, reason=d.reason, ts=now,
            panic=d.panic, holder=holder,
            held=[deploy_pb2.HeldCount(ts=t, replicas=n) for t, n in st.held],
            panic_since=st.panic_since or 0.0, panic_last_ts=st.panic_last, ready=ready,
            published=book.published or 0,
        )

    def restore(self, rec: deploy_pb2.AutoscalerDecision) -> None:
        """Take over from a predecessor's snapshot: the same held counts, panic and last
        command, so the successor neither repeats nor contradicts it. The demand window itself
        is not kept: it refills from the routers' reports, and no replica goes meanwhile."""
        book = self._books.setdefault(rec.deployment_id, _Book())
        st = book.state
        st.desired = rec.desired
        st.held = [(h.ts, h.replicas) for h in rec.held]
        st.panic_since = rec.panic_since or None
        st.panic_last = rec.panic_last_ts
        book.published = rec.published
        book.published_at = rec.ts
