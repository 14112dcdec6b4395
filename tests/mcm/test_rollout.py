"""Rolling a deployment to a new spec revision: what changed, which changes need new
replicas, and the plan's steps (surge one, an old replica stops only once a new one is READY)."""

from __future__ import annotations

from basalt.deployfile import Deployment
from basalt.ids import ReplicaId
from basalt.pb import deploy_pb2
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.inventory import ClusterName, DeploymentId
from services.mcm.core.placement import Requirement
from services.mcm.core.reconcile import (
    Launch,
    ObservedReplica,
    PlanContext,
    ReplicaPhase,
    StopReason,
    Target,
    plan,
)
from services.mcm.core.rollout import changes, needs_rollout, spec_revision
from tests.mcm.clusters import AWS_E1A, cluster

ME = "mcm-1"
D = DeploymentId("chat")
REQ = Requirement("H100", 1)
READY, LOADING = ReplicaPhase.READY, ReplicaPhase.LOADING


def record(**kw: object) -> deploy_pb2.DeploymentRecord:
    base: dict[str, object] = {"id": "chat", "model": "chat", "engine": "sim"}
    return Deployment.model_validate({**base, **kw}).to_record()


def rep(rid: str, revision: str, state: ReplicaPhase = READY, started: float = 0.0
        ) -> ObservedReplica:
    return ObservedReplica(ReplicaId(rid), D, ME, AWS_E1A.name, AWS_E1A.region, state, started,
                           revision)


def step(replicas: list[ObservedReplica], desired: int = 1, clusters=None):  # type: ignore[no-untyped-def]
    ctx = PlanContext(ME, clusters or [AWS_E1A], Blocklist(), 100.0, "s")
    return plan({D: Target(desired, REQ, revision="new")}, replicas, [], ctx)


def test_the_revision_covers_what_a_replica_is_started_with_and_nothing_else() -> None:
    base = spec_revision(record().spec)
    assert base == spec_revision(record().spec), "stable"
    for same in ({"routing_policy": "round_robin"}, {"queue_limit": 7}, {"replicas": 3},
                 {"autoscaling": {"max_replica": 4}}, {"allowed_regions": ["us"]}):
        assert spec_revision(record(**same).spec) == base, same
    for other in ({"engine_args": {"max_num_seqs": "8"}}, {"model_path": "/m"},
                  {"engine": "vllm"}, {"accelerator": "H100", "accelerator_count": 1},
                  {"loras": [{"name": "a", "path": "/a"}]}):
        assert spec_revision(record(**other).spec) != base, other


def test_changes_name_each_field_and_say_which_need_new_replicas() -> None:
    old = record(engine_args={"max_num_seqs": "8", "seed": "1"}, queue_limit=10)
    new = record(engine_args={"max_num_seqs": "16", "seed": "1"}, queue_limit=20,
                 routing_policy="least_loaded", replicas=2)
    found = {c.field: (c.old, c.new, c.needs_new_replicas) for c in changes(old, new)}
    assert found == {
        "engine_args.max_num_seqs": (8, 16, True),
        "queue_limit": (10, 20, False),
        "routing_policy": ("kv", "least_loaded", False),
        "replicas": (1, 2, False),
    }
    assert needs_rollout(changes(old, new))
    assert not needs_rollout(changes(old, record(engine_args={"max_num_seqs": "8", "seed": "1"},
                                                 queue_limit=99)))
    assert changes(old, old) == []


def test_one_replica_rolls_new_first_then_old_goes() -> None:
    # 1. The old one serves; a new one is launched beside it (surge one).
    p = step([rep("old", "v1")])
    assert len(p.launches) == 1 and not p.stops
    assert isinstance(p.launches[0], Launch) and p.launches[0].revision == "new"
    # 2. The new one is loading: nothing changes (the old keeps serving).
    p = step([rep("old", "v1"), rep("n1", "new", LOADING)])
    assert p.actions == []
    # 3. The new one is READY: the old one stops (it drains), nothing more is launched.
    p = step([rep("old", "v1"), rep("n1", "new")])
    assert not p.launches and [(s.replica_id, s.reason) for s in p.stops] == [
        ("old", StopReason.ROLLOUT)]
    # 4. Done: steady state.
    assert step([rep("n1", "new")]).actions == []


def test_three_replicas_never_drop_below_three_ready() -> None:
    replicas = [rep(f"o{i}", "v1", started=i) for i in range(3)]
    seen_ready_low = 3
    for round_ in range(10):
        p = step(replicas, desired=3)
        stopped = {s.replica_id for s in p.stops}
        replicas = [r for r in replicas if r.replica_id not in stopped]
        ready = sum(r.state is READY for r in replicas)
        seen_ready_low = min(seen_ready_low, ready)
        assert len(replicas) + len(p.launches) <= 4, "at most one over desired"
        # Launched replicas come up READY at the next step.
        replicas += [rep(a.replica_id, "new", started=100 + round_) for a in p.launches]
        if all(r.revision == "new" for r in replicas) and len(replicas) == 3:
            break
    else:
        raise AssertionError(f"rollout did not finish: {replicas}")
    assert seen_ready_low == 3


def test_old_replicas_that_are_not_ready_stop_at_once() -> None:
    p = step([rep("old-ready", "v1"), rep("old-loading", "v1", LOADING)], desired=2)
    assert {s.replica_id for s in p.stops} == {"old-loading"}
    assert len(p.launches) == 2, "one old READY stays: two new make desired + 1"


def test_a_replica_without_a_known_revision_is_taken_as_current() -> None:
    assert step([rep("legacy", "")]).actions == []


def test_with_no_room_for_the_surge_one_old_replica_makes_room() -> None:
    small = cluster("aws", "us-east-1", "us-east-1a", 3.0, gpus=1)
    p = step([ObservedReplica(ReplicaId("old"), D, ME, small.name, small.region, READY, 0.0,
                              "v1")], clusters=[small])
    assert not p.launches and [s.replica_id for s in p.stops] == ["old"]
    assert D not in p.unplaced
    # Next step: the old one is on its way out (stopping): the new one is placed.
    ctx = PlanContext(ME, [small], Blocklist(), 101.0, "s",
                      stopping=frozenset({ReplicaId("old")}))
    p = plan({D: Target(1, REQ, revision="new")},
             [ObservedReplica(ReplicaId("old"), D, ME, ClusterName(small.name), small.region,
                              READY, 0.0, "v1")], [], ctx)
    assert len(p.launches) == 1
