"""The control plane's liveness and start-failure backoff rules (core/liveness.py; no NATS)."""

from __future__ import annotations

from basalt.ids import ReplicaId
from basalt.pb import events_pb2
from services.mcm.core.inventory import ClusterName, DeploymentId
from services.mcm.core.liveness import Liveness, backing_off, next_failure
from services.mcm.core.provider import LaunchHandle
from services.mcm.core.reconcile import PendingLaunch
from services.mcm.core.status import StartFailure
from tests.mcm.clusters import AWS_E1A, cluster

ME = "mcm-1"
D = DeploymentId("llama")
READY = events_pb2.REPLICA_STATE_READY
LOADING = events_pb2.REPLICA_STATE_LOADING


def record(rid: str, state: int = READY, heartbeat: float = 100.0, owner: str = ME,
           dep: str = D) -> events_pb2.ReplicaRecord:
    return events_pb2.ReplicaRecord(replica_id=rid, deployment=dep, owner=owner, state=state,
                                    heartbeat_ts=heartbeat, cluster=AWS_E1A.name)


def handle(rid: str, c: str = AWS_E1A.name, started: float = 50.0) -> LaunchHandle:
    return LaunchHandle(ReplicaId(rid), D, ME, "local", c, "aws", "us-east-1", "us-east-1a",
                        started)


def live() -> Liveness:
    return Liveness(ME, stale_after_s=6.0)


def observe(lv: Liveness, records: dict[str, events_pb2.ReplicaRecord], handles: list[LaunchHandle],
            now: float, *, launching: list[PendingLaunch] | None = None,
            launched: dict[str, LaunchHandle] | None = None, stopping: set[str] | None = None,
            clusters=(AWS_E1A,)):
    return lv.observe({ReplicaId(k): v for k, v in records.items()}, handles, launching or [],
                      {ReplicaId(k): v for k, v in (launched or {}).items()},
                      {p.replica_id for p in launching or []},
                      {ReplicaId(s) for s in stopping or set()}, list(clusters), now)


def test_a_listed_replica_is_alive_whatever_its_heartbeat() -> None:
    lv = live()
    seen = observe(lv, {"a": record("a", heartbeat=0.0)}, [handle("a")], now=1000.0)
    assert [r.replica_id for r in seen.replicas] == ["a"]
    assert seen.replicas[0].started_at == 50.0, "started when the provider started it"
    assert seen.vanished == []


def test_a_record_never_listed_lives_while_its_heartbeat_is_fresh() -> None:
    lv = live()
    assert [r.replica_id for r in observe(lv, {"a": record("a", heartbeat=95.0)}, [],
                                          now=100.0).replicas] == ["a"]
    assert observe(lv, {"a": record("a", heartbeat=93.0)}, [], now=100.0).replicas == []


def test_another_owners_replica_is_seen_but_never_judged() -> None:
    lv = live()
    seen = observe(lv, {"x": record("x", owner="other", heartbeat=0.0)}, [], now=1000.0)
    assert [r.replica_id for r in seen.replicas] == ["x"]


def test_a_replica_seen_listed_then_gone_vanished_and_is_no_longer_alive() -> None:
    lv = live()
    observe(lv, {"a": record("a")}, [handle("a")], now=100.0)
    seen = observe(lv, {"a": record("a", heartbeat=100.0)}, [], now=101.0)
    assert [(v.replica_id, v.was_ready, v.start_failure) for v in seen.vanished] == [
        ("a", True, False)]
    assert seen.replicas == [], "its last record still says READY, but it is dead"
    assert lv.dead(ReplicaId("a"))


def test_a_launch_that_finished_and_is_not_listed_died() -> None:
    lv = live()
    seen = observe(lv, {}, [], now=100.0, launched={"a": handle("a")})
    assert [(v.replica_id, v.start_failure) for v in seen.vanished] == [("a", True)]


def test_stopped_or_stopping_replicas_did_not_vanish() -> None:
    lv = live()
    observe(lv, {}, [handle("a"), handle("b")], now=100.0)
    lv.stopped.add(ReplicaId("a"))
    seen = observe(lv, {}, [], now=101.0, stopping={"b"})
    assert seen.vanished == []


def test_a_never_ready_replica_on_a_cluster_that_went_down_is_no_start_failure() -> None:
    lv = live()
    down = cluster("aws", "us-east-1", "us-east-1a", 3.0, up=False)
    observe(lv, {"a": record("a", state=LOADING)}, [handle("a")], now=100.0)
    seen = observe(lv, {}, [], now=101.0, clusters=(down,))
    assert [(v.replica_id, v.start_failure) for v in seen.vanished] == [("a", False)]


def test_listed_processes_without_a_record_are_pending_launches() -> None:
    lv = live()
    inflight = PendingLaunch(ReplicaId("b"), D, ClusterName(AWS_E1A.name), 90.0, ME)
    seen = observe(lv, {}, [handle("a")], now=100.0, launching=[inflight])
    assert [p.replica_id for p in seen.pending] == ["a", "b"]


def test_forgets_replicas_that_are_gone_everywhere() -> None:
    lv = live()
    observe(lv, {"a": record("a")}, [handle("a")], now=100.0)
    observe(lv, {"a": record("a")}, [], now=101.0)  # its record outlives it until the TTL
    assert lv.lost == {"a"}
    observe(lv, {}, [], now=102.0)
    assert lv.lost == set() and lv.ever_ready == set()


def test_backoff_doubles_up_to_the_cap_and_expires() -> None:
    f1 = next_failure(None, "boom", now=10.0, base_s=2.0, max_s=5.0)
    assert (f1.count, f1.retry_at, f1.last_error) == (1, 12.0, "boom")
    f2 = next_failure(f1, "boom", now=12.0, base_s=2.0, max_s=5.0)
    assert (f2.count, f2.retry_at) == (2, 16.0)
    f3 = next_failure(f2, "boom", now=16.0, base_s=2.0, max_s=5.0)
    assert (f3.count, f3.retry_at) == (3, 21.0), "capped at max_s"
    assert backing_off(f3, 20.9) and not backing_off(f3, 21.0)
    assert not backing_off(None, 0.0)


def test_a_ready_replica_clears_its_deployments_failures() -> None:
    lv = live()
    lv.record_failure(D, "boom", now=10.0, base_s=2.0, max_s=60.0)
    assert lv.backing_off(D, 11.0)
    observe(lv, {"a": record("a", state=READY)}, [handle("a")], now=11.0)
    assert lv.failures == {} and not lv.backing_off(D, 11.0)


def test_start_failure_keeps_its_error() -> None:
    lv = live()
    failure = lv.record_failure(D, "exited before ready", now=0.0, base_s=2.0, max_s=60.0)
    assert lv.failures[D] == failure == StartFailure(1, 2.0, "exited before ready",
                                                     first_error="exited before ready")
