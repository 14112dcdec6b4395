"""Which of our replicas are alive, which vanished, and how long a deployment whose replicas
keep failing to start waits before the next launch (pure: time comes in as `now`).

The reconciler keeps one `Liveness` between ticks and feeds it what each tick read: the
replica records, what the provider lists for our owner id, the launches in flight. Rules:

- a record with our owner is alive while the provider lists it or it is being launched; one
  we saw listed (or whose launch finished) that is no longer listed, and that nobody asked to
  stop, vanished (killed, lost host); for one never listed, alive while its heartbeat is at
  most `stale_after_s` old;
- a vanished replica that was never READY, on a cluster still up, is a start failure of its
  deployment; each consecutive failure doubles the wait before that deployment's next launch
  (`backoff_base_s`, 2×, ... up to `backoff_max_s`); a READY replica clears the count; after
  `max_failures` in a row the deployment is FAILED and gets no launch until its spec revision
  or its retry mark changes (a new deploy, or activate), or it is deactivated;
- a process the provider lists without a record yet is a pending launch (so a restarted
  control plane adopts launches still starting).
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field

from basalt.ids import ReplicaId
from basalt.pb import events_pb2

from .inventory import Cluster, ClusterName, DeploymentId
from .provider import LaunchHandle
from .reconcile import ObservedReplica, PendingLaunch, observed_from_record
from .status import StartFailure


@dataclass(slots=True, frozen=True)
class Vanished:
    """A replica of ours that is gone though nobody stopped it."""

    replica_id: ReplicaId
    handle: LaunchHandle
    was_ready: bool
    # Never READY, on a cluster that is still up: its deployment failed to start.
    start_failure: bool


@dataclass(slots=True, frozen=True)
class Observation:
    replicas: list[ObservedReplica]
    pending: list[PendingLaunch]
    vanished: list[Vanished]


# Consecutive start failures after which a deployment is FAILED (launches stop).
MAX_FAILURES = 5


@dataclass(slots=True, frozen=True)
class FailureMark:
    """What a deployment is at when a failure is recorded: a later change of either clears it."""

    revision: str = ""
    retry_ts: float = 0.0


def next_failure(prev: StartFailure | None, error: str, now: float, base_s: float,
                 max_s: float, *, phase: str = "", first_error: str = "",
                 mark: FailureMark = FailureMark(),
                 max_failures: int = MAX_FAILURES) -> StartFailure:
    """One more consecutive start failure: the next launch waits base, 2×base, ... ≤ max;
    the `max_failures`-th gives up."""
    count = prev.count + 1 if prev else 1
    delay = min(base_s * 2 ** (count - 1), max_s)
    return StartFailure(count, now + delay, error, phase, first_error or error.split("\n")[0],
                        count >= max_failures, mark.revision, mark.retry_ts)


def backing_off(failure: StartFailure | None, now: float) -> bool:
    """True while a deployment waits after its last start failure, and for good once FAILED."""
    return failure is not None and (failure.given_up or now < failure.retry_at)


def still_applies(failure: StartFailure, mark: FailureMark, active: bool) -> bool:
    """A failure counts while its deployment is active at the revision and retry mark it
    failed at."""
    return active and failure.revision == mark.revision and failure.retry_ts == mark.retry_ts


@dataclass(slots=True)
class Liveness:
    """What the reconciler knows of its own replicas between ticks."""

    owner: str
    stale_after_s: float
    # What the provider listed at the last tick.
    listed: dict[ReplicaId, LaunchHandle] = field(default_factory=dict)
    # Seen listed (or launched), then gone without a stop: dead.
    lost: set[ReplicaId] = field(default_factory=set)
    # Asked to stop by this process; kept until the replica's record and process are gone.
    stopped: set[ReplicaId] = field(default_factory=set)
    ever_ready: set[ReplicaId] = field(default_factory=set)
    first_seen: dict[ReplicaId, float] = field(default_factory=dict)
    # Consecutive start failures per deployment, cleared by a READY replica.
    failures: dict[DeploymentId, StartFailure] = field(default_factory=dict)

    def alive(self, rec: events_pb2.ReplicaRecord, listed: Mapping[ReplicaId, LaunchHandle],
              launching: Collection[ReplicaId], now: float) -> bool:
        rid = ReplicaId(rec.replica_id)
        if rid in listed or rid in launching:
            return True
        if rid in self.lost or rid in self.stopped:
            return False
        return now - rec.heartbeat_ts <= self.stale_after_s

    def dead(self, rid: ReplicaId) -> bool:
        """Known gone (vanished or stopped by us): its record can be deleted."""
        return rid in self.lost or rid in self.stopped

    def observe(self, records: Mapping[ReplicaId, events_pb2.ReplicaRecord],
                handles: Sequence[LaunchHandle], launching: Sequence[PendingLaunch],
                launched: Mapping[ReplicaId, LaunchHandle], launching_now: Collection[ReplicaId],
                stopping: Collection[ReplicaId], clusters: Sequence[Cluster],
                now: float) -> Observation:
        """Live replicas, launches without a record yet, and replicas that vanished.

        `launching` was read before the tick's first await: a launch that finished during the
        tick is then in `launching`, in `handles`, or both (the plan counts an id once); one in
        `launched` finished before the listing, so if it is not listed it died.
        `launching_now` are the launches in flight now; `stopping` the stops in flight."""
        listed = {h.replica_id: h for h in handles}
        for rid, rec in records.items():  # a dead replica's last record may still say READY
            if rec.state == events_pb2.REPLICA_STATE_READY and rec.owner == self.owner:
                self.ever_ready.add(rid)
                self.failures.pop(DeploymentId(rec.deployment), None)
        vanished = self._vanished(listed, {**launched, **self.listed}, stopping, clusters)
        self.listed = listed
        replicas = []
        revisions = {p.replica_id: p.revision for p in launching}
        for rid, rec in records.items():
            if rec.owner == self.owner and not self.alive(rec, listed, launching_now, now):
                continue
            handle = listed.get(rid)
            started = handle.started_at if handle else self.first_seen.setdefault(rid, now)
            revision = handle.spec_revision if handle else revisions.get(rid, "")
            replicas.append(observed_from_record(rec, started, revision))
        pending = [PendingLaunch(h.replica_id, h.deployment_id, ClusterName(h.cluster),
                                 h.started_at, h.owner, h.spec_revision) for h in handles]
        known = set(records) | set(listed) | set(launching_now)
        for ids in (self.lost, self.stopped, self.ever_ready):
            ids.intersection_update(known)
        self.first_seen = {r: t for r, t in self.first_seen.items() if r in known}
        return Observation(replicas, pending + list(launching), vanished)

    def _vanished(self, listed: Mapping[ReplicaId, LaunchHandle],
                  before: Mapping[ReplicaId, LaunchHandle], stopping: Collection[ReplicaId],
                  clusters: Sequence[Cluster]) -> list[Vanished]:
        up = {c.name for c in clusters if c.up}
        gone = []
        for rid, handle in before.items():
            if rid in listed or rid in self.stopped or rid in stopping:
                continue
            self.lost.add(rid)
            was_ready = rid in self.ever_ready
            gone.append(Vanished(rid, handle, was_ready,
                                 not was_ready and handle.cluster in up))
        return gone

    def record_failure(self, dep: DeploymentId, error: str, now: float, base_s: float,
                       max_s: float, *, phase: str = "", first_error: str = "",
                       mark: FailureMark = FailureMark(),
                       max_failures: int = MAX_FAILURES) -> StartFailure:
        failure = next_failure(self.failures.get(dep), error, now, base_s, max_s, phase=phase,
                               first_error=first_error, mark=mark, max_failures=max_failures)
        self.failures[dep] = failure
        return failure

    def forget_failures(self, marks: Mapping[DeploymentId, tuple[FailureMark, bool]]) -> None:
        """Drop the failures of deployments gone, inactive, or changed since they failed
        (`marks`: each deployment's current mark and whether it is active)."""
        for dep, failure in list(self.failures.items()):
            mark, active = marks.get(dep, (FailureMark(), False))
            if dep not in marks or not still_applies(failure, mark, active):
                del self.failures[dep]

    def backing_off(self, dep: DeploymentId, now: float) -> bool:
        return backing_off(self.failures.get(dep), now)
