"""The reconcile decision: from desired counts and the replicas seen, which replicas to launch
where and which to stop (no I/O; time, owner id and id seed come in).

Rules, per deployment:
- Only replicas whose owner is `ctx.owner` are ours; others are neither counted nor touched.
  A restarted control plane with the same owner id therefore adopts the replicas it finds.
- READY + LOADING replicas and pending launches count toward the desired number, so nothing
  is launched twice while a launch is in flight. DRAINING replicas and those already asked to
  stop (`ctx.stopping`) are on their way out: not counted, not stopped again.
- Replicas of deployments that are gone or inactive are stopped; so are replicas on clusters
  that are down, and pending launches older than `ctx.launch_timeout_s`: they stop counting,
  and the same plan launches their replacements elsewhere.
- Scale down stops, in this order: replicas on blocked clusters, pending launches, LOADING,
  READY; newest first within each; ties by replica id, highest first.
- Launches go where `placement.evaluate` says, each one updating the usage and per-region
  counts the next one sees. Their ids come from (`ctx.seed`, counter), skipping taken ids.
- Rollout: a replica started at another spec revision than its deployment's (a known one:
  "" is a replica from before revisions, taken as current) is old. While a deployment has old
  replicas, it may run one replica more than desired (surge 1): a new one is launched, and an
  old READY one is stopped only once a new one is READY in its place (stopping drains it: its
  requests finish). Old replicas that are not READY serve nothing and stop at once. When the
  surge cannot be placed (no capacity) and no new replica is on its way, one old READY replica
  is stopped first to make room (its slot is free at the next plan).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum

from basalt.ids import ReplicaId
from basalt.pb import events_pb2
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import PlacementError
from services.mcm.core.inventory import (
    Cluster,
    ClusterName,
    ClusterUsage,
    DeploymentId,
    LatencyTable,
    TrafficMix,
    clusters_by_name,
)
from services.mcm.core.placement import DEFAULT_WEIGHTS, NO_LATENCY, Requirement, Weights, evaluate


class ReplicaPhase(Enum):
    LOADING = "loading"
    READY = "ready"
    DRAINING = "draining"


@dataclass(slots=True, frozen=True)
class ObservedReplica:
    """One replica as its record in the `basalt_replicas` bucket shows it."""

    replica_id: ReplicaId
    deployment_id: DeploymentId
    owner: str
    cluster: ClusterName
    region: str
    state: ReplicaPhase
    # When it was launched or first seen; orders "newest first" on scale down.
    started_at: float
    # The deployment's spec revision it was started with ("": unknown, taken as current).
    revision: str = ""


@dataclass(slots=True, frozen=True)
class PendingLaunch:
    """A launch the provider accepted whose replica record has not appeared yet."""

    replica_id: ReplicaId
    deployment_id: DeploymentId
    cluster: ClusterName
    started_at: float
    owner: str = ""
    revision: str = ""


@dataclass(slots=True, frozen=True)
class Target:
    """What one deployment wants: how many replicas, of what, and where its traffic is."""

    desired: int
    requirement: Requirement = field(default_factory=Requirement)
    active: bool = True
    traffic: TrafficMix = field(default_factory=dict)
    # Estimated start seconds on each cluster (name -> s; core/startcost.py).
    start_s: Mapping[str, float] = field(default_factory=dict)
    # The spec revision new replicas get (core/rollout.py); others are rolled ("": no rollout).
    revision: str = ""


class StopReason(Enum):
    DEPLOYMENT_GONE = "deployment gone"
    DEPLOYMENT_INACTIVE = "deployment inactive"
    CLUSTER_DOWN = "cluster down"
    LAUNCH_TIMEOUT = "launch timed out"
    SCALE_DOWN = "scale down"
    ROLLOUT = "replaced by a new revision"


@dataclass(slots=True, frozen=True)
class Launch:
    deployment_id: DeploymentId
    cluster: Cluster
    replica_id: ReplicaId
    revision: str = ""


@dataclass(slots=True, frozen=True)
class Stop:
    replica_id: ReplicaId
    reason: StopReason
    deployment_id: DeploymentId | None = None


Action = Launch | Stop


@dataclass(slots=True, frozen=True)
class PlanContext:
    """Everything besides desired counts and replicas that a plan depends on."""

    owner: str
    clusters: Sequence[Cluster]
    blocklist: Blocklist
    now: float
    # Launch ids are hash(seed, counter); the caller keeps `Plan.next_seq` for the next plan.
    seed: str = ""
    seq: int = 0
    latency: LatencyTable = NO_LATENCY
    weights: Weights = DEFAULT_WEIGHTS
    launch_timeout_s: float = 600.0
    stopping: frozenset[ReplicaId] = frozenset()


@dataclass(slots=True)
class Plan:
    actions: list[Action] = field(default_factory=list)
    # Deployments short of replicas that no cluster fits, with the reason.
    unplaced: dict[DeploymentId, PlacementError] = field(default_factory=dict)
    next_seq: int = 0

    @property
    def launches(self) -> list[Launch]:
        return [a for a in self.actions if isinstance(a, Launch)]

    @property
    def stops(self) -> list[Stop]:
        return [a for a in self.actions if isinstance(a, Stop)]


class _Phase(Enum):
    """A member's progress; the value orders scale-down victims (lowest goes first)."""

    PENDING = 0
    LOADING = 1
    READY = 2


@dataclass(slots=True, frozen=True)
class _Member:
    replica_id: ReplicaId
    deployment_id: DeploymentId
    cluster: ClusterName
    region: str
    phase: _Phase
    started_at: float
    revision: str = ""


_STATE_FROM_PROTO = {
    events_pb2.REPLICA_STATE_LOADING: ReplicaPhase.LOADING,
    events_pb2.REPLICA_STATE_READY: ReplicaPhase.READY,
    events_pb2.REPLICA_STATE_DRAINING: ReplicaPhase.DRAINING,
}


def observed_from_record(record: events_pb2.ReplicaRecord, started_at: float,
                         revision: str = "") -> ObservedReplica:
    """The view of a replica record (an unset state reads as LOADING)."""
    return ObservedReplica(
        ReplicaId(record.replica_id), DeploymentId(record.deployment), record.owner,
        ClusterName(record.cluster), record.region,
        _STATE_FROM_PROTO.get(record.state, ReplicaPhase.LOADING), started_at, revision,
    )


_ID_UNSAFE = re.compile(r"[^A-Za-z0-9_-]+")


def launch_id(deployment_id: DeploymentId, seed: str, seq: int) -> ReplicaId:
    """A replica id that is a pure function of its inputs and safe in NATS subjects."""
    digest = hashlib.sha256(f"{seed}:{deployment_id}:{seq}".encode()).hexdigest()[:8]
    return ReplicaId(f"{_ID_UNSAFE.sub('-', deployment_id)}-{digest}")


def _usage_of(members: Sequence[_Member], units: Mapping[DeploymentId, int]) -> ClusterUsage:
    usage = ClusterUsage()
    for m in members:
        usage.add(m.cluster, units.get(m.deployment_id, 0))
    return usage


def _members(replicas: Sequence[ObservedReplica], pending: Sequence[PendingLaunch],
             ctx: PlanContext, clusters: Mapping[ClusterName, Cluster]) -> list[_Member]:
    """Our replicas and launches not on their way out; a pending id with a record is a replica."""
    out: list[_Member] = []
    seen: set[ReplicaId] = set()
    for r in replicas:
        if r.owner != ctx.owner:
            continue
        seen.add(r.replica_id)
        if r.state is ReplicaPhase.DRAINING or r.replica_id in ctx.stopping:
            continue
        phase = _Phase.READY if r.state is ReplicaPhase.READY else _Phase.LOADING
        out.append(_Member(r.replica_id, r.deployment_id, r.cluster, r.region, phase,
                           r.started_at, r.revision))
    for p in pending:
        if p.replica_id in seen or p.replica_id in ctx.stopping:
            continue
        if p.owner and p.owner != ctx.owner:
            continue
        seen.add(p.replica_id)
        c = clusters.get(p.cluster)
        out.append(_Member(p.replica_id, p.deployment_id, p.cluster, c.region if c else "",
                           _Phase.PENDING, p.started_at, p.revision))
    return out


def _forced_stop(m: _Member, targets: Mapping[DeploymentId, Target], ctx: PlanContext,
                 clusters: Mapping[ClusterName, Cluster]) -> StopReason | None:
    target = targets.get(m.deployment_id)
    if target is None:
        return StopReason.DEPLOYMENT_GONE
    if not target.active:
        return StopReason.DEPLOYMENT_INACTIVE
    cluster = clusters.get(m.cluster)
    if cluster is not None and not cluster.up:
        return StopReason.CLUSTER_DOWN
    if m.phase is _Phase.PENDING and ctx.now - m.started_at > ctx.launch_timeout_s:
        return StopReason.LAUNCH_TIMEOUT
    return None


def _victims(members: list[_Member], n: int, ctx: PlanContext,
             clusters: Mapping[ClusterName, Cluster]) -> list[_Member]:
    def blocked(m: _Member) -> bool:
        c = clusters.get(m.cluster)
        return c is not None and ctx.blocklist.is_blocked(c, ctx.now)

    ordered = sorted(members, key=lambda m: m.replica_id, reverse=True)
    ordered.sort(key=lambda m: (not blocked(m), m.phase.value, -m.started_at))
    return ordered[:n]


@dataclass(slots=True)
class _Ids:
    seed: str
    seq: int
    taken: set[ReplicaId]

    def next(self, deployment_id: DeploymentId) -> ReplicaId:
        while True:
            rid = launch_id(deployment_id, self.seed, self.seq)
            self.seq += 1
            if rid not in self.taken:
                self.taken.add(rid)
                return rid


def _launches(dep: DeploymentId, target: Target, n: int, live: list[_Member],
              usage: ClusterUsage, ids: _Ids, ctx: PlanContext, plan: Plan) -> int:
    """Plan up to `n` launches; returns how many found a cluster."""
    placed = 0
    by_region: dict[str, int] = {}
    for m in live:
        by_region[m.region] = by_region.get(m.region, 0) + 1
    for _ in range(n):
        result = evaluate(target.requirement, ctx.clusters, usage, by_region, ctx.blocklist,
                          target.traffic, ctx.now, ctx.latency, ctx.weights, target.start_s)
        if result.best is None:
            plan.unplaced[dep] = result.error()
            return placed
        cluster = result.best.cluster
        plan.actions.append(Launch(dep, cluster, ids.next(dep), target.revision))
        usage.add(cluster.name, target.requirement.units)
        by_region[cluster.region] = by_region.get(cluster.region, 0) + 1
        placed += 1
    return placed


def plan(
    targets: Mapping[DeploymentId, Target],
    replicas: Sequence[ObservedReplica],
    pending: Sequence[PendingLaunch],
    ctx: PlanContext,
) -> Plan:
    """Actions that move our replicas toward `targets`; deployments not in it are gone."""
    clusters = clusters_by_name(ctx.clusters)
    members = _members(replicas, pending, ctx, clusters)
    units = {d: t.requirement.units for d, t in targets.items()}
    # Replicas still hold their units until they are gone, including those stopped below.
    usage = _usage_of(members, units)
    out = Plan()
    live: dict[DeploymentId, list[_Member]] = {d: [] for d in targets}
    for m in sorted(members, key=lambda m: m.replica_id):
        reason = _forced_stop(m, targets, ctx, clusters)
        if reason is not None:
            out.actions.append(Stop(m.replica_id, reason, m.deployment_id))
        else:
            live[m.deployment_id].append(m)
    taken = {r.replica_id for r in replicas} | {p.replica_id for p in pending}
    ids = _Ids(ctx.seed, ctx.seq, taken)
    for dep in sorted(targets):
        target, have = targets[dep], live[dep]
        want = max(target.desired, 0) if target.active else 0
        old = [m for m in have if m.revision and target.revision
               and m.revision != target.revision]
        if old:
            _roll(dep, target, want, have, old, usage, ids, ctx, clusters, out)
        elif len(have) > want:
            for m in _victims(have, len(have) - want, ctx, clusters):
                out.actions.append(Stop(m.replica_id, StopReason.SCALE_DOWN, dep))
        elif len(have) < want:
            _launches(dep, target, want - len(have), have, usage, ids, ctx, out)
    out.next_seq = ids.seq
    return out


ROLLOUT_SURGE = 1


def _roll(dep: DeploymentId, target: Target, want: int, have: list[_Member], old: list[_Member],
          usage: ClusterUsage, ids: _Ids, ctx: PlanContext,
          clusters: Mapping[ClusterName, Cluster], out: Plan) -> None:
    """One plan step of replacing `old` replicas by ones at the target revision (the module
    docstring has the rules)."""
    new = [m for m in have if m not in old]
    old_ready = [m for m in old if m.phase is _Phase.READY]
    stops = [m for m in old if m.phase is not _Phase.READY]  # serve nothing: go now
    new_ready = sum(m.phase is _Phase.READY for m in new)
    # Old READY ones go as READY new ones take their place (never below `want` ready).
    excess = max(0, len(old_ready) + new_ready - want)
    stops += _victims(old_ready, excess, ctx, clusters)
    for m in stops:
        out.actions.append(Stop(m.replica_id, StopReason.ROLLOUT, dep))
    if len(new) > want:
        for m in _victims(new, len(new) - want, ctx, clusters):
            out.actions.append(Stop(m.replica_id, StopReason.SCALE_DOWN, dep))
        return
    staying_old = len(old) - len(stops)
    n = min(want - len(new), want + ROLLOUT_SURGE - staying_old - len(new))
    if n <= 0:
        return
    placed = _launches(dep, target, n, new, usage, ids, ctx, out)
    in_progress = any(m.phase is not _Phase.READY for m in new)
    left = [m for m in old_ready if m not in stops]
    if placed == 0 and not in_progress and left:
        # No room for the surge: make room by stopping one old replica (it drains first).
        out.unplaced.pop(dep, None)
        victim = _victims(left, 1, ctx, clusters)[0]
        out.actions.append(Stop(victim.replica_id, StopReason.ROLLOUT, dep))
