"""Which decisions become scale commands (services/autoscaler/core/planner.py): a command only
when the decision changes, a manual count respected, a drift set back, and a successor that
takes over from a snapshot without repeating or contradicting its predecessor."""

from __future__ import annotations

from itertools import pairwise

from services.autoscaler.core.planner import RESEND_S, DeploymentInput, Planner, ScaleTo
from services.autoscaler.core.settings import Settings
from services.autoscaler.core.signals import Sample, Tick

T0 = 1000.0
DEP = "dep-a"
# 1 in flight per replica, a 10 s window, a 60 s scale-down delay, no panic, no lead.
SETTINGS = Settings(
    min_replica=0, max_replica=10, autoscaling_window_s=10.0, scale_down_delay_s=60.0,
    concurrency_target=1, target_utilization_percentage=100, panic_window_s=0.0,
    cold_start_lead=False, scale_down_step=10,
)


def inputs(s: float, conc: float, current: int, *, manual: bool = False,
           settings: Settings = SETTINGS) -> dict[str, DeploymentInput]:
    now = T0 + s
    tick = Tick(now, Sample(now, conc), ready=current)
    return {DEP: DeploymentInput(settings, tick, current, manual)}


def step(planner: Planner, s: float, conc: float, current: int, **kw: object) -> list[ScaleTo]:
    return planner.on_tick(T0 + s, inputs(s, conc, current, **kw))  # type: ignore[arg-type]


def counts(effects: list[ScaleTo]) -> list[int]:
    return [e.replicas for e in effects]


def test_a_command_only_when_the_decision_changes() -> None:
    p = Planner()
    first = step(p, 0, 3.0, current=1)
    assert [(e.deployment_id, e.replicas, e.reason) for e in first] == [(DEP, 3, "demand")]
    # Not applied yet, within RESEND_S: no second command.
    assert step(p, 1, 3.0, current=1) == []
    # Applied, the same decision again: none either.
    assert step(p, 10, 3.0, current=3) == []
    assert step(p, 20, 3.0, current=3) == []
    assert step(p, 30, 3.0, current=3) == []
    # Demand to 5: one command for 5.
    assert counts(step(p, 40, 5.0, current=3)) == [5]
    assert step(p, 50, 5.0, current=5) == []


def test_no_command_when_the_first_decision_is_the_current_count() -> None:
    p = Planner()
    assert step(p, 0, 3.0, current=3) == []
    assert step(p, 10, 3.0, current=3) == []


def test_a_manual_count_stands_until_the_decision_changes() -> None:
    p = Planner()
    assert counts(step(p, 0, 3.0, current=1)) == [3]
    # A person scales to 7; the autoscaler still decides 3 and leaves the 7 alone.
    for s in range(10, 100, 10):
        assert step(p, s, 3.0, current=7, manual=True) == [], s
    # The decision changes (demand 5): the autoscaler's count wins again.
    assert counts(step(p, 100, 5.0, current=7, manual=True)) == [5]


def test_a_drift_not_from_a_manual_command_is_set_back_at_most_once_per_resend() -> None:
    p = Planner()
    assert counts(step(p, 0, 3.0, current=1)) == [3]
    assert step(p, 10, 3.0, current=3) == []
    # The count moves to 7 without a scale command (a settings patch, say): set back to 3.
    assert counts(step(p, 20, 3.0, current=7)) == [3]
    # Not applied yet: no repeat within RESEND_S, one more after it.
    sent = [(s, counts(step(p, 20 + s, 3.0, current=7))) for s in range(1, 21)]
    resent_at = [s for s, c in sent if c]
    assert all(c in ([], [3]) for _, c in sent)
    assert resent_at, "a drift that stays is set back again"
    assert resent_at[0] >= RESEND_S
    assert all(b - a >= RESEND_S for a, b in pairwise(resent_at))


def held_at_six(p: Planner) -> None:
    """Demand 6 until +20, then 1: the 60 s delay holds the count at 6 until +80."""
    assert counts(step(p, 0, 6.0, current=1)) == [6]
    for s in (10, 20):
        assert step(p, s, 6.0, current=6) == []
    assert step(p, 30, 1.0, current=6) == []
    last = p.last(DEP)
    assert last is not None and (last.desired, last.reason) == (6, "scale_down_delay")


def test_a_successor_from_a_snapshot_neither_repeats_nor_forgets_the_delay() -> None:
    a = Planner()
    held_at_six(a)
    rec = a.snapshot(DEP, "holder-a", T0 + 30, ready=6)
    assert rec is not None
    assert (rec.desired, rec.reason, rec.holder, rec.ready) == (6, "scale_down_delay",
                                                                "holder-a", 6)

    b = Planner()
    b.restore(rec)
    # The successor goes on: no duplicate command for 6, and the delay still holds the count
    # (the want of 6 at +20) past its own first window, until 60 s after that want.
    for s in (40, 50, 60, 70):
        assert step(b, s, 1.0, current=6) == [], s
        last = b.last(DEP)
        assert last is not None and last.desired == 6, s
    assert counts(step(b, 90, 1.0, current=6)) == [1]


def test_without_the_snapshot_a_new_planner_scales_down_after_its_first_window() -> None:
    # The contrast to the test above: a new planner knows nothing of the want of 6.
    c = Planner()
    assert step(c, 40, 1.0, current=6) == []  # its first window: no scale-down
    assert counts(step(c, 50, 1.0, current=6)) == [1]


def test_a_successor_keeps_the_last_command_when_the_count_was_set_manually() -> None:
    a = Planner()
    assert counts(step(a, 0, 3.0, current=1)) == [3]
    assert step(a, 10, 3.0, current=7, manual=True) == []
    rec = a.snapshot(DEP, "holder-a", T0 + 10, ready=7)
    assert rec is not None
    b = Planner()
    b.restore(rec)
    # The decision is still 3, the command for it already sent: the manual 7 stands.
    for s in (20, 30, 40):
        assert step(b, s, 3.0, current=7, manual=True) == [], s


def test_a_deployment_dropped_from_inputs_is_forgotten() -> None:
    p = Planner()
    held_at_six(p)
    assert p.on_tick(T0 + 35, {}) == []
    assert p.last(DEP) is None
    assert p.snapshot(DEP, "holder", T0 + 35, ready=6) is None
    # Back again within the delay: the want of 6 is forgotten, so once its first window has
    # passed the count goes to the demand's 1.
    assert step(p, 40, 1.0, current=6) == []
    assert counts(step(p, 50, 1.0, current=6)) == [1]


def test_each_deployment_is_decided_apart() -> None:
    p = Planner()
    now = T0
    other = "dep-b"
    inp = {**inputs(0, 2.0, current=1),
           other: DeploymentInput(SETTINGS, Tick(now, Sample(now, 4.0), ready=1), 1)}
    assert sorted((e.deployment_id, e.replicas) for e in p.on_tick(now, inp)) == [
        (DEP, 2), (other, 4)]


def test_requests_parked_at_a_deployment_set_to_zero_by_hand_wake_it() -> None:
    """A person scaled to 0 after the autoscaler last said 1: a quiet deployment stays at 0,
    but once a request waits there the autoscaler sends 1 again (the request would wait for
    nothing otherwise)."""
    p = Planner()
    assert counts(step(p, 0, 1.0, current=0)) == [1]
    for s in range(1, 12):  # manual 0 stands while nothing waits
        assert step(p, s, 1.0, current=0, manual=True) == [], s
    now = T0 + 12
    parked = Tick(now, Sample(now, 1.0, parked=1), ready=0, wake=True)
    effects = p.on_tick(now, {DEP: DeploymentInput(SETTINGS, parked, 0, True)})
    assert counts(effects) == [1]
