"""A deployment's health: one state and its reason, as status, the API and the dashboard show."""

from __future__ import annotations

from basalt.deployfile import Deployment
from basalt.pb import deploy_pb2, events_pb2
from services.mcm.core.health import ControlState, health
from services.mcm.core.liveness import FailureMark, Liveness, backing_off
from services.mcm.core.status import StartFailure

READY, LOADING = events_pb2.REPLICA_STATE_READY, events_pb2.REPLICA_STATE_LOADING


def rec(**kw: object) -> deploy_pb2.DeploymentRecord:
    return Deployment.model_validate({"id": "d", "model": "m", "engine": "sim", **kw}).to_record()


def replica(rid: str, state: int = READY) -> events_pb2.ReplicaRecord:
    return events_pb2.ReplicaRecord(replica_id=rid, deployment="d", state=state)


def state(r: deploy_pb2.DeploymentRecord, reps: list[events_pb2.ReplicaRecord],
          control: ControlState | None = None) -> tuple[str, str]:
    h = health(r, reps, "rev", control or ControlState(), now=100.0)
    return h["state"], h["reason"]


def test_each_state_and_its_reason() -> None:
    assert state(rec(), [replica("a")]) == ("ok", "")
    assert state(rec(active=False), []) == ("inactive", "deactivated: no replicas run")
    assert state(rec(replicas=2), [replica("a"), replica("b", LOADING)])[0] == "starting"
    assert state(rec(replicas=0), [])[0] == "scaled_to_zero"
    unplaced = ControlState(unplaced={"d": "no cluster fits a CPU slot: no capacity: local "
                                           "(capacity 4/4 used, needs 1)"})
    assert state(rec(), [], unplaced) == ("unplaced", unplaced.unplaced["d"])
    rolling = ControlState(revisions={"a": "old-rev", "b": "rev"})
    s, why = state(rec(), [replica("a"), replica("b", LOADING)], rolling)
    assert s == "rolling" and "1 replica(s) at an older revision" in why


def test_failures_show_the_phase_and_first_error_and_failed_wins() -> None:
    f = StartFailure(2, 108.0, "long", phase="engine", first_error="ValueError: no config.json")
    s, why = state(rec(), [], ControlState(failures={"d": f}))
    assert s == "starting" and "2 start failure(s), next try in 8s" in why
    assert "in engine: ValueError: no config.json" in why
    gave_up = StartFailure(5, 200.0, "long", phase="engine", first_error="ValueError: x",
                           given_up=True)
    h = health(rec(), [], "rev", ControlState(failures={"d": gave_up},
                                               unplaced={"d": "no room"}), 100.0)
    assert h["state"] == "failed" and "5 replicas in a row failed to start in engine" in h["reason"]
    assert h["retry_at"] is None and h["first_error"] == "ValueError: x"


def test_the_fifth_failure_gives_up_until_the_spec_or_the_retry_mark_changes() -> None:
    lv = Liveness("me", 6.0)
    mark = FailureMark("r1", 0.0)
    for i in range(5):
        f = lv.record_failure("d", "boom", now=float(i), base_s=1.0, max_s=60.0, mark=mark,
                              phase="engine", first_error="E: boom")
    assert f.given_up and f.count == 5
    assert backing_off(f, now=10_000.0), "no launch, ever, while failed"
    lv.forget_failures({"d": (mark, True)})
    assert "d" in lv.failures, "same revision, same mark: still failed"
    lv.forget_failures({"d": (FailureMark("r1", 50.0), True)})
    assert "d" not in lv.failures, "activate marked a retry"
    lv.record_failure("d", "boom", now=1.0, base_s=1.0, max_s=60.0, mark=mark)
    lv.forget_failures({"d": (FailureMark("r2", 0.0), True)})
    assert "d" not in lv.failures, "a new spec revision starts afresh"
    lv.record_failure("d", "boom", now=1.0, base_s=1.0, max_s=60.0, mark=mark)
    lv.forget_failures({"d": (mark, False)})
    assert "d" not in lv.failures, "deactivated"
    lv.record_failure("d", "boom", now=1.0, base_s=1.0, max_s=60.0, mark=mark)
    lv.forget_failures({})
    assert lv.failures == {}, "deleted"
