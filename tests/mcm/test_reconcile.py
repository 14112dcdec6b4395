"""The reconcile decision: counts, adoption, in-flight launches, failover and stop order."""

from __future__ import annotations

from dataclasses import replace

from basalt.ids import ReplicaId
from basalt.pb import events_pb2
from services.mcm.core.blocklist import Blocklist, Scope
from services.mcm.core.inventory import ClusterName, DeploymentId
from services.mcm.core.placement import Requirement, Rule
from services.mcm.core.reconcile import (
    Launch,
    ObservedReplica,
    PendingLaunch,
    PlanContext,
    ReplicaPhase,
    Stop,
    StopReason,
    Target,
    observed_from_record,
    plan,
)
from tests.mcm.clusters import AWS_E1A, AWS_E1B, GCP_EU4A, WORLD, cluster

ME = "mcm-1"
D = DeploymentId("llama")
H100 = Requirement("H100", 1)


def ctx(now: float = 1000.0, **kw) -> PlanContext:
    return PlanContext(**{"owner": ME, "clusters": WORLD, "blocklist": Blocklist(), "now": now,
                          "seed": "s", **kw})


def replica(rid: str, state: ReplicaPhase = ReplicaPhase.READY, c=AWS_E1A, started: float = 0.0,
            owner: str = ME, dep: DeploymentId = D) -> ObservedReplica:
    return ObservedReplica(ReplicaId(rid), dep, owner, c.name, c.region, state, started)


def pending_of(p, now: float) -> list[PendingLaunch]:
    return [PendingLaunch(a.replica_id, a.deployment_id, a.cluster.name, now, ME)
            for a in p.launches]


def ready_of(pending: list[PendingLaunch]) -> list[ObservedReplica]:
    by_name = {c.name: c for c in WORLD}
    return [replica(p.replica_id, c=by_name[p.cluster], started=p.started_at) for p in pending]


def stopped(p) -> set[str]:
    return {s.replica_id for s in p.stops}


def test_scale_1_to_3_to_1() -> None:
    p1 = plan({D: Target(1, H100)}, [], [], ctx(now=10.0))
    assert len(p1.launches) == 1 and not p1.stops
    replicas = ready_of(pending_of(p1, 10.0))

    p3 = plan({D: Target(3, H100)}, replicas, [], ctx(now=20.0, seq=p1.next_seq))
    assert len(p3.launches) == 2 and not p3.stops
    new = ready_of(pending_of(p3, 20.0))
    assert len({r.replica_id for r in replicas + new}) == 3
    # Spread: the three replicas do not all sit in one region.
    assert len({r.region for r in replicas + new}) > 1

    p_down = plan({D: Target(1, H100)}, replicas + new, [], ctx(now=30.0, seq=p3.next_seq))
    assert not p_down.launches
    assert stopped(p_down) == {r.replica_id for r in new}, "the newest two go"
    assert all(s.reason is StopReason.SCALE_DOWN for s in p_down.stops)


def test_steady_state_plans_nothing() -> None:
    p = plan({D: Target(2, H100)}, [replica("a"), replica("b", c=GCP_EU4A)], [], ctx())
    assert p.actions == [] and p.unplaced == {}


def test_no_duplicate_launches_while_a_launch_is_pending() -> None:
    first = plan({D: Target(2, H100)}, [], [], ctx(now=10.0))
    pending = pending_of(first, 10.0)
    again = plan({D: Target(2, H100)}, [], pending, ctx(now=15.0, seq=first.next_seq))
    assert again.actions == []
    # The record appears while the pending entry is still held: counted once, not twice.
    half = plan({D: Target(2, H100)}, ready_of(pending[:1]), pending, ctx(now=16.0))
    assert half.actions == []


def test_restart_adopts_own_replicas_and_ignores_foreign_ones() -> None:
    ours = [replica("llama-1", started=1.0), replica("llama-2", c=GCP_EU4A, started=2.0)]
    foreign = [replica("other-1", owner="mcm-other"), replica("other-2", owner="")]
    p = plan({D: Target(2, H100)}, ours + foreign, [], ctx())
    assert p.actions == [], "a restarted mcm must not launch duplicates of its own replicas"
    # Foreign replicas never count toward our desired count nor get stopped, even when
    # their deployment is unknown to us.
    p = plan({D: Target(3, H100)}, ours + foreign, [], ctx())
    assert len(p.launches) == 1 and not p.stops
    p = plan({}, foreign, [], ctx())
    assert p.actions == []


def test_replicas_of_a_down_cluster_are_replaced_in_one_plan() -> None:
    down = replace(AWS_E1A, up=False)
    clusters = [down if c.name == AWS_E1A.name else c for c in WORLD]
    replicas = [replica("r1", c=AWS_E1A), replica("r2", c=GCP_EU4A)]
    p = plan({D: Target(2, H100)}, replicas, [], ctx(clusters=clusters))
    assert p.stops == [Stop(ReplicaId("r1"), StopReason.CLUSTER_DOWN, D)]
    assert len(p.launches) == 1 and p.launches[0].cluster.name != AWS_E1A.name


def test_pending_launch_on_a_down_cluster_is_replaced_too() -> None:
    down = replace(AWS_E1A, up=False)
    clusters = [down, AWS_E1B]
    pending = [PendingLaunch(ReplicaId("p1"), D, AWS_E1A.name, 990.0, ME)]
    p = plan({D: Target(1, H100)}, [], pending, ctx(clusters=clusters))
    assert stopped(p) == {"p1"}
    assert [a.cluster.name for a in p.launches] == [AWS_E1B.name]


def test_gone_and_inactive_deployments_are_stopped() -> None:
    other = DeploymentId("old")
    replicas = [replica("a"), replica("b", dep=other),
                replica("c", state=ReplicaPhase.DRAINING, dep=other)]
    p = plan({D: Target(1, H100, active=False)}, replicas, [], ctx())
    assert {(s.replica_id, s.reason) for s in p.stops} == {
        ("a", StopReason.DEPLOYMENT_INACTIVE), ("b", StopReason.DEPLOYMENT_GONE)}
    assert not p.launches


def test_draining_and_stopping_replicas_are_going_and_get_replaced() -> None:
    replicas = [replica("a", state=ReplicaPhase.DRAINING), replica("b")]
    p = plan({D: Target(2, H100)}, replicas, [], ctx(stopping=frozenset({ReplicaId("b")})))
    assert not p.stops, "already going: no second stop"
    assert len(p.launches) == 2


def test_scale_down_order_blocked_then_pending_then_loading_then_ready_newest_first() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, GCP_EU4A, now=900.0, ttl=600.0)
    replicas = [
        replica("ready-old", started=1.0), replica("ready-new", started=5.0),
        replica("loading", state=ReplicaPhase.LOADING, started=2.0),
        replica("blocked-ready-old", c=GCP_EU4A, started=0.5),
    ]
    pending = [PendingLaunch(ReplicaId("pending"), D, AWS_E1B.name, 999.0, ME)]
    order = []
    for keep in (4, 3, 2, 1, 0):
        p = plan({D: Target(keep, H100)}, replicas, pending, ctx(blocklist=bl))
        order.append(stopped(p))
    assert order == [
        {"blocked-ready-old"},
        {"blocked-ready-old", "pending"},
        {"blocked-ready-old", "pending", "loading"},
        {"blocked-ready-old", "pending", "loading", "ready-new"},
        {"blocked-ready-old", "pending", "loading", "ready-new", "ready-old"},
    ]


def test_stale_pending_launch_is_stopped_and_replaced() -> None:
    pending = [PendingLaunch(ReplicaId("slow"), D, AWS_E1A.name, 0.0, ME)]
    p = plan({D: Target(1, H100)}, [], pending, ctx(now=1000.0, launch_timeout_s=300.0))
    assert p.stops == [Stop(ReplicaId("slow"), StopReason.LAUNCH_TIMEOUT, D)]
    assert len(p.launches) == 1


def test_launch_ids_are_deterministic_and_never_collide() -> None:
    a = plan({D: Target(3, H100)}, [], [], ctx(seed="x", seq=7))
    b = plan({D: Target(3, H100)}, [], [], ctx(seed="x", seq=7))
    assert a.actions == b.actions
    ids = [x.replica_id for x in a.launches]
    assert len(set(ids)) == 3 and all(i.startswith("llama-") for i in ids)
    assert a.next_seq == 10
    c = plan({D: Target(3, H100)}, [], [], ctx(seed="y", seq=7))
    assert not set(ids) & {x.replica_id for x in c.launches}
    # An id already taken (e.g. a foreign replica's) is skipped.
    taken = [replica(ids[0], owner="someone-else")]
    d = plan({D: Target(3, H100)}, taken, [], ctx(seed="x", seq=7))
    assert ids[0] not in {x.replica_id for x in d.launches} and d.next_seq == 11


def test_launches_respect_capacity_across_one_plan_and_report_why_the_rest_wait() -> None:
    small = [cluster("aws", "us-east-1", "us-east-1a", 3.0, gpus=2)]
    p = plan({D: Target(3, H100)}, [], [], ctx(clusters=small))
    assert len(p.launches) == 2
    err = p.unplaced[D]
    assert [r.rule for r in err.rejections] == [Rule.NO_CAPACITY]
    # Other deployments' replicas use the same pool.
    other = DeploymentId("other")
    p = plan({D: Target(1, H100), other: Target(2, H100)}, [], [], ctx(clusters=small))
    assert len(p.launches) == 2 and list(p.unplaced) == [other]


def test_launch_actions_name_the_cluster_to_launch_on() -> None:
    p = plan({D: Target(1, H100)}, [], [], ctx())
    assert p.launches == [Launch(D, AWS_E1A, p.launches[0].replica_id)]


def test_view_from_record() -> None:
    rec = events_pb2.ReplicaRecord(replica_id="r", deployment="d", owner=ME, cluster="c",
                                   region="us-east-1", state=events_pb2.REPLICA_STATE_DRAINING)
    v = observed_from_record(rec, started_at=5.0)
    assert v == ObservedReplica(ReplicaId("r"), DeploymentId("d"), ME, ClusterName("c"),
                            "us-east-1", ReplicaPhase.DRAINING, 5.0)


def test_failover_a_provider_error_blocks_its_scope_and_the_next_plan_goes_elsewhere() -> None:
    bl = Blocklist()
    targets = {D: Target(1, H100)}
    first = plan(targets, [], [], ctx(now=0.0, blocklist=bl))
    assert first.launches[0].cluster == AWS_E1A
    # The provider answered that launch with a zone capacity error: block the zone.
    bl.block(Scope.ZONE, AWS_E1A, now=1.0, ttl=300.0, reason="capacity")
    second = plan(targets, [], [], ctx(now=1.0, blocklist=bl, seq=first.next_seq))
    assert second.launches[0].cluster == AWS_E1B
    assert second.launches[0].replica_id != first.launches[0].replica_id
    # Then the whole cloud fails: the next try leaves aws altogether.
    bl.block(Scope.CLOUD, AWS_E1B, now=2.0, ttl=300.0, reason="aws outage")
    third = plan(targets, [], [], ctx(now=2.0, blocklist=bl, seq=second.next_seq))
    assert third.launches[0].cluster.cloud == "gcp"
    # Blocks expire: after the TTL the cheapest zone is tried again.
    later = plan(targets, [], [], ctx(now=400.0, blocklist=bl))
    assert later.launches[0].cluster == AWS_E1A
