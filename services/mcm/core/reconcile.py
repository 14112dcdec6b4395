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


@dataclass(slots=True, frozen=True)
class PendingLaunch:
    """A launch the provider accepted whose replica record has not appeared yet."""

    replica_id: ReplicaId
    deployment_id: DeploymentId
    cluster: ClusterName
    started_at: float
    owner: str = ""


@dataclass(slots=True, frozen=True)
class Target:
    """What one deployment wants: how many replicas, of what, and where its traffic is."""

    desired: int
    requirement: Requirement = field(default_factory=Requirement)
    active: bool = True
    traffic: TrafficMix = field(default_factory=dict)
    # Estimated start seconds on each cluster (name -> s; core/startcost.py).
    start_s: Mapping[str, float] = field(default_factory=dict)


class StopReason(Enum):
    DEPLOYMENT_GONE = "deployment gone"
    DEPLOYMENT_INACTIVE = "deployment inactive"
    CLUSTER_DOWN = "cluster down"
    LAUNCH_TIMEOUT = "launch timed out"
    SCALE_DOWN = "scale down"


@dataclass(slots=True, frozen=True)
class Launch:
    deployment_id: DeploymentId
    cluster: Cluster
    replica_id: ReplicaId


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


_STATE_FROM_PROTO = {
    events_pb2.REPLICA_STATE_LOADING: ReplicaPhase.LOADING,
    events_pb2.REPLICA_STATE_READY: ReplicaPhase.READY,
    events_pb2.REPLICA_STATE_DRAINING: ReplicaPhase.DRAINING,
}


def observed_from_record(record: events_pb2.ReplicaRecord, started_at: float) -> ObservedReplica:
    """The view of a replica record (an unset state reads as LOADING)."""
    return ObservedReplica(
        ReplicaId(record.replica_id), DeploymentId(record.deployment), record.owner,
        ClusterName(record.cluster), record.region,
        _STATE_FROM_PROTO.get(record.state, ReplicaPhase.LOADING), started_at,
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
                           r.started_at))
    for p in pending:
        if p.replica_id in seen or p.replica_id in ctx.stopping:
            continue
        if p.owner and p.owner != ctx.owner:
            continue
        seen.add(p.replica_id)
        c = clusters.get(p.cluster)
        out.append(_Member(p.replica_id, p.deployment_id, p.cluster, c.region if c else "",
                           _Phase.PENDING, p.started_at))
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
              usage: ClusterUsage, ids: _Ids, ctx: PlanContext, plan: Plan) -> None:
    by_region: dict[str, int] = {}
    for m in live:
        by_region[m.region] = by_region.get(m.region, 0) + 1
    for _ in range(n):
        result = evaluate(target.requirement, ctx.clusters, usage, by_region, ctx.blocklist,
                          target.traffic, ctx.now, ctx.latency, ctx.weights, target.start_s)
        if result.best is None:
            plan.unplaced[dep] = result.error()
            return
        cluster = result.best.cluster
        plan.actions.append(Launch(dep, cluster, ids.next(dep)))
        usage.add(cluster.name, target.requirement.units)
        by_region[cluster.region] = by_region.get(cluster.region, 0) + 1


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
        if len(have) > want:
            for m in _victims(have, len(have) - want, ctx, clusters):
                out.actions.append(Stop(m.replica_id, StopReason.SCALE_DOWN, dep))
        elif len(have) < want:
            _launches(dep, target, want - len(have), have, usage, ids, ctx, out)
    out.next_seq = ids.seq
    return out
