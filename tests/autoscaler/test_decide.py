"""The autoscaler's decision rule (services/autoscaler/core/decide.py), one rule at a time.

Each scenario is a series of ticks; the expected counts are worked out by hand in the comments
from the scenario's numbers. `PLAIN` turns off every rule but the window average (no panic, no
cold-start lead, no scale-down delay, no step cap, utilization 100 %), and each test turns on
the rule it is about.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import replace

import pytest

from basalt.deployfile import Autoscaling
from basalt.pb import deploy_pb2
from services.autoscaler.core.decide import CORRECTION_MAX, Decision, State, decide
from services.autoscaler.core.settings import Mode, Settings
from services.autoscaler.core.signals import Capacity, Latency, Sample, Tick

T0 = 1000.0  # a clock that is not zero
NO_LATENCY = Latency()  # no request finished

PLAIN = Settings(
    min_replica=0, max_replica=100, autoscaling_window_s=60.0, scale_down_delay_s=0.0,
    concurrency_target=1, target_utilization_percentage=100, panic_window_s=0.0,
    cold_start_lead=False, scale_down_step=100,
)


def at(s: float, conc: float = 0.0, *, ready: int = 1, tokens: float = 0.0,
       prompt: float = 0.0, completion: float = 0.0, parked: int = 0, wake: bool = False,
       cold_start_s: float | None = None, latency: Latency = NO_LATENCY,
       capacity: Capacity | None = None) -> Tick:
    """The tick `s` seconds after T0."""
    now = T0 + s
    sample = Sample(now, conc, tokens, 0.0, prompt, completion, parked)
    return Tick(now, sample, ready, cold_start_s=cold_start_s, wake=wake, latency=latency,
                capacity=capacity)


def watched() -> State:
    """A deployment the autoscaler has watched for an hour (past its first window), with no
    demand history kept: no warming up."""
    return State(first_tick=T0 - 3600.0)


def run(settings: Settings, ticks: Iterable[Tick], state: State | None = None
        ) -> dict[float, Decision]:
    """Decisions keyed by seconds after T0."""
    state = watched() if state is None else state
    return {t.now - T0: decide(settings, state, t) for t in ticks}


def follow(settings: Settings, conc: Callable[[int], float], seconds: Iterable[int],
           state: State | None = None, **kw: object) -> dict[int, Decision]:
    """Ticks at `seconds`, the ready count catching up with the last decision at once."""
    state = watched() if state is None else state
    out: dict[int, Decision] = {}
    ready = 1
    for s in seconds:
        d = decide(settings, state, at(s, conc(s), ready=ready, **kw))  # type: ignore[arg-type]
        out[s] = d
        ready = d.desired
    return out


# -- window average ------------------------------------------------------------------------


def test_desired_is_the_window_average_over_the_per_replica_target() -> None:
    # 10 in flight for 30 s, then nothing: over the 60 s window the average is 300 / 60 = 5.
    ds = follow(PLAIN, lambda s: 10.0 if s < 30 else 0.0, range(100))
    assert ds[29].desired == 10
    assert ds[59].desired == 5
    assert ds[59].reason == "demand"
    # At +85 the window (25, 85] still holds 4 seconds of 10: 40 / 60 = 0.67 -> 1 replica.
    assert ds[85].desired == 1
    # At +95 every sample of 10 is older than the window: they stop counting.
    assert ds[95].desired == 0
    assert ds[95].want == 0


def test_a_sample_older_than_the_window_does_not_count() -> None:
    # One tick of 30 in flight, then 60 s later a tick of 1: only the second is in the window.
    ds = run(PLAIN, [at(0, 30.0), at(61, 1.0)])
    assert ds[0].desired == 30
    assert ds[61].want == 1


@pytest.mark.parametrize(("target", "utilization", "expected"), [
    (1, 100, 7),   # 7 in flight / (1 x 1.0)
    (1, 70, 10),   # 7 / (1 x 0.7) = 10
    (2, 70, 5),    # 7 / (2 x 0.7) = 5
    (4, 50, 4),    # 7 / (4 x 0.5) = 3.5 -> 4
])
def test_utilization_and_concurrency_target_set_the_count(
        target: int, utilization: int, expected: int) -> None:
    s = replace(PLAIN, concurrency_target=target, target_utilization_percentage=utilization)
    ds = run(s, [at(i, 7.0) for i in range(3)])
    assert [d.desired for d in ds.values()] == [expected] * 3


# -- clamps --------------------------------------------------------------------------------


def test_the_count_is_clamped_to_max_replica_and_says_so() -> None:
    ds = run(replace(PLAIN, max_replica=5), [at(0, 7.0), at(1, 7.0)])
    assert [(d.desired, d.reason, d.want) for d in ds.values()] == [
        (5, "max_replica", 7), (5, "max_replica", 7)]


def test_the_count_is_clamped_to_min_replica_and_says_so() -> None:
    ds = run(replace(PLAIN, min_replica=3), [at(0, 1.0), at(1, 0.0)])
    assert [(d.desired, d.reason) for d in ds.values()] == [(3, "min_replica"), (3, "min_replica")]


def test_within_the_bounds_no_clamp_reason() -> None:
    ds = run(replace(PLAIN, min_replica=1, max_replica=5), [at(0, 3.0)])
    assert (ds[0].desired, ds[0].reason) == (3, "demand")


# -- scale-down delay and step cap -----------------------------------------------------------

# Ticks every 10 s over a 10 s window: each window holds only the latest tick.
TEN = replace(PLAIN, autoscaling_window_s=10.0)


def six_then_one(s: int) -> float:
    return 6.0 if s <= 20 else 1.0


def test_after_demand_drops_the_count_holds_for_the_delay_then_falls() -> None:
    ds = follow(replace(TEN, scale_down_delay_s=60.0), six_then_one, range(0, 120, 10))
    assert ds[20].desired == 6
    # The last want of 6 was at +20; within 60 s of it the count stays at 6.
    for s in (30, 40, 50, 60, 70):
        assert (ds[s].desired, ds[s].reason, ds[s].want) == (6, "scale_down_delay", 1), s
    # More than 60 s after it, the count falls to the demand's 1.
    assert ds[90].desired == 1
    assert ds[110].desired == 1


def test_the_delay_holds_the_largest_recent_want() -> None:
    # Wants 6 (+0), 3 (+10, +20), 1 (+30 on), delay 25 s: at +20 the 6 (20 s ago) holds; at +30
    # it is 30 s old, and the largest want of the last 25 s is the 3 of +10 and +20; at +50
    # the 3 of +20 is 30 s old too, and the count is 1.
    conc = {0: 6.0, 10: 3.0, 20: 3.0}
    ds = follow(replace(TEN, scale_down_delay_s=25.0), lambda s: conc.get(s, 1.0),
                range(0, 70, 10))
    assert ds[20].desired == 6
    assert (ds[30].desired, ds[30].reason) == (3, "scale_down_delay")
    assert (ds[40].desired, ds[40].reason) == (3, "scale_down_delay")
    assert ds[50].desired == 1


def test_with_no_delay_the_count_falls_at_once() -> None:
    ds = follow(TEN, six_then_one, range(0, 60, 10))
    assert (ds[30].desired, ds[30].reason) == (1, "demand")


def test_scale_down_step_caps_how_many_go_per_tick() -> None:
    # 7 replicas, then no demand: 2 go per tick, 7 -> 5 -> 3 -> 1 -> 0.
    s = replace(TEN, scale_down_step=2)
    ds = follow(s, lambda s: 7.0 if s <= 10 else 0.0, range(0, 70, 10))
    assert [ds[t].desired for t in (10, 20, 30, 40, 50, 60)] == [7, 5, 3, 1, 0, 0]
    assert ds[20].want == 0


def test_the_step_cap_does_not_slow_scaling_up() -> None:
    ds = follow(replace(TEN, scale_down_step=1), lambda s: 1.0 if s == 0 else 9.0, [0, 10])
    assert [d.desired for d in ds.values()] == [1, 9]


# -- warming up (a restart) ----------------------------------------------------------------


def test_after_a_restart_no_scale_down_during_the_first_window() -> None:
    # A fresh State that knows the current count (4) but no demand history: the 60 s window
    # is refilling, so the count stays at 4 although the demand is 1 ...
    ds = follow(PLAIN, lambda s: 1.0, range(70), state=State(desired=4))
    for s in (0, 30, 59):
        assert (ds[s].desired, ds[s].reason) == (4, "warming_up"), s
    # ... and once a whole window is in, it falls to 1.
    assert ds[65].desired == 1


def test_a_long_running_state_scales_down_at_once() -> None:
    # The same drop for a deployment whose first tick was an hour ago: no warming up.
    state = watched()
    state.desired = 4
    ds = run(PLAIN, [at(0, 1.0, ready=4)], state=state)
    assert (ds[0].desired, ds[0].reason) == (1, "demand")


def test_warming_up_does_not_stop_a_scale_up() -> None:
    ds = run(PLAIN, [at(0, 10.0, ready=4)], state=State(desired=4))
    assert ds[0].desired == 10


# -- panic -----------------------------------------------------------------------------------

# 60 s window, 1 s ticks, threshold 2: 1 in flight for a minute, then a burst of 20 for 10 s,
# then 1 again.
PANIC = replace(PLAIN, panic_window_s=6.0, panic_threshold=2.0, scale_down_step=1)


def burst(s: int) -> float:
    return 20.0 if 60 <= s < 70 else 1.0


def test_a_burst_adds_replicas_within_two_ticks_in_panic() -> None:
    ds = follow(PANIC, burst, range(70))
    assert ds[59].desired == 1 and not ds[59].panic
    # +60: the 6 s window holds 1,1,1,1,1,20: 25 / 6 = 4.2 -> 5 (>= 2 x 1 ready): panic.
    assert (ds[60].desired, ds[60].reason, ds[60].panic) == (5, "panic", True)
    # +61: 1,1,1,1,20,20: 44 / 6 = 7.3 -> 8.
    assert ds[61].desired == 8
    # +69: the short window is all 20.
    assert ds[69].desired == 20


def test_without_panic_the_window_average_grows_slowly() -> None:
    ds = follow(replace(PANIC, panic_window_s=0.0), burst, range(70))
    # +60: 59 x 1 + 20 over 60 = 1.3 -> 2; +61: (58 + 40) / 60 = 1.6 -> 2.
    assert [ds[60].desired, ds[61].desired] == [2, 2]
    # +69: (50 x 1 + 10 x 20) / 60 = 4.2 -> 5, where panic had 20.
    assert ds[69].desired == 5
    assert not any(d.panic for d in ds.values())


def test_no_scale_down_while_in_panic_and_panic_ends_a_window_later() -> None:
    ds = follow(PANIC, burst, range(140))
    # The condition held at +60 (5 wanted vs 1 ready); afterwards the ready count kept up.
    in_panic = [ds[s] for s in range(60, 119)]
    assert all(d.panic for d in in_panic)
    counts = [d.desired for d in in_panic]
    assert counts == sorted(counts)  # only grows
    assert counts[-1] == 20
    # From +70 the demand is back to 1, yet nothing goes until a whole window (60 s) has
    # passed without the condition ...
    assert ds[118].desired == 20
    # ... then panic ends and the count falls, one replica per tick (step 1).
    assert not ds[121].panic
    assert ds[121].desired < 20
    assert ds[130].desired < ds[121].desired


# -- SLA sizing ------------------------------------------------------------------------------

SLA = replace(PLAIN, mode=Mode.SLA, ttft_p90_target_ms=500.0, itl_p90_target_ms=50.0)
PRIOR = Capacity(prefill_tokens_per_s=10_000.0, decode_tokens_per_s=1_000.0)


def test_sla_sizes_prefill_plus_decode_and_names_the_heavier() -> None:
    # 30,000 prompt tok/s over 10,000 per replica = 3; 1,500 generated over 1,000 = 1.5;
    # 4.5 -> 5 replicas, mostly prefill.
    d = run(SLA, [at(0, 2.0, prompt=30_000.0, completion=1_500.0, capacity=PRIOR)])[0]
    assert (d.desired, d.reason) == (5, "sla")
    assert "prefill-heavy" in d.detail
    # 5,000 prompt (0.5) + 4,000 generated (4): 4.5 -> 5, mostly decode.
    d = run(SLA, [at(0, 2.0, prompt=5_000.0, completion=4_000.0, capacity=PRIOR)])[0]
    assert (d.desired, d.reason) == (5, "sla")
    assert "decode-heavy" in d.detail


def test_sla_without_a_capacity_falls_back_to_the_concurrency_rule() -> None:
    d = run(SLA, [at(0, 3.0, prompt=30_000.0, completion=1_500.0)])[0]
    assert (d.desired, d.reason) == (3, "demand")


def test_ttft_above_target_raises_the_count_over_a_few_ticks() -> None:
    # 30,000 prompt tok/s on a 10,000 prior: 3 replicas while TTFT is on target ...
    def ticks(ttft: float) -> list[Tick]:
        return [at(i, 2.0, ready=3, prompt=30_000.0, capacity=PRIOR,
                   latency=Latency(ttft_p90_ms=ttft)) for i in range(40)]

    on_target = [d.desired for d in run(SLA, ticks(500.0)).values()]
    assert set(on_target) == {3}
    # ... while a TTFT p90 of twice the target asks for more, tick after tick ...
    slow = [d.desired for d in run(SLA, ticks(1_000.0)).values()]
    assert slow[0] > 3
    assert slow == sorted(slow) and slow[0] < slow[5]
    # ... settling where the correction (observed / target = 2) puts it: 3 x 2, no further.
    assert slow[-1] == max(slow) == 6 < 3 * CORRECTION_MAX


def test_itl_above_target_raises_the_decode_need() -> None:
    def ticks(itl: float) -> list[Tick]:
        return [at(i, 2.0, ready=3, completion=3_000.0, capacity=PRIOR,
                   latency=Latency(ttft_p90_ms=100.0, itl_p90_ms=itl)) for i in range(5)]

    assert [d.desired for d in run(SLA, ticks(50.0)).values()][-1] == 3
    assert [d.desired for d in run(SLA, ticks(100.0)).values()][-1] > 3


def test_capacity_is_learned_when_the_sla_is_met() -> None:
    # No prior. 2 replicas carry 8,000 prompt tok/s with TTFT p90 on target: one replica
    # carries at least 4,000. Later (a window on) 16,000 tok/s with no latency data: 4 replicas.
    s = replace(SLA, itl_p90_target_ms=0.0)
    ds = run(s, [at(0, 2.0, ready=2, prompt=8_000.0, latency=Latency(ttft_p90_ms=500.0)),
                 at(100, 2.0, ready=2, prompt=16_000.0)])
    assert (ds[0].desired, ds[0].reason) == (2, "sla")
    assert (ds[100].desired, ds[100].reason) == (4, "sla")


def test_nothing_is_learned_when_the_sla_is_missed() -> None:
    s = replace(SLA, itl_p90_target_ms=0.0)
    ds = run(s, [at(0, 2.0, ready=2, prompt=8_000.0, latency=Latency(ttft_p90_ms=800.0)),
                 at(100, 3.0, ready=2, prompt=16_000.0)])
    assert ds[0].reason == "demand"
    assert (ds[100].desired, ds[100].reason) == (3, "demand")


# -- cold-start lead -------------------------------------------------------------------------

LEAD = replace(PLAIN, cold_start_lead=True)


def rising(s: int) -> float:
    return float(s)  # +1 in flight per second


def test_rising_demand_with_a_cold_start_scales_ahead() -> None:
    ds = follow(LEAD, rising, range(10), cold_start_s=20.0)
    # At +9 the demand rises 1/s; the last 6 s average 6.5, and 20 s ahead is far more, but
    # the lead adds at most the recent need again: 13. The plain rule (average 4.5) asks for 5.
    assert (ds[9].desired, ds[9].reason) == (13, "cold_start_lead")


@pytest.mark.parametrize(("settings", "conc", "cold_start"), [
    (replace(LEAD, cold_start_lead=False), rising, 20.0),  # turned off
    (LEAD, lambda s: 4.5, 20.0),  # flat demand
    (LEAD, rising, None),  # no cold-start time known
], ids=["off", "flat", "unknown-cold-start"])
def test_no_lead_when_off_flat_or_unknown(
        settings: Settings, conc: Callable[[int], float], cold_start: float | None) -> None:
    ds = follow(settings, conc, range(10), cold_start_s=cold_start)
    assert ds[9].desired == 5  # the plain rule: average 4.5 -> 5
    assert all(d.reason != "cold_start_lead" for d in ds.values())


# -- token target ----------------------------------------------------------------------------


def test_the_token_target_raises_the_count_when_tokens_dominate() -> None:
    s = replace(PLAIN, concurrency_target=4, target_in_flight_tokens=1_000,
                target_utilization_percentage=70)
    # 7 in flight / (4 x 0.7) = 2.5 -> 3; 7,000 tokens / (1,000 x 0.7) = 10: tokens win.
    assert run(s, [at(0, 7.0, tokens=7_000.0)])[0].desired == 10
    # 7 in flight with 700 tokens: 1 replica by tokens, 3 by concurrency.
    assert run(s, [at(0, 7.0, tokens=700.0)])[0].desired == 3
    # Without the token target, 7,000 tokens change nothing.
    s0 = replace(s, target_in_flight_tokens=0)
    assert run(s0, [at(0, 7.0, tokens=7_000.0)])[0].desired == 3


# -- wake and scale to zero ------------------------------------------------------------------

IDLE = replace(PLAIN, scale_down_delay_s=900.0)


def test_a_wake_at_zero_asks_for_one_replica_at_once() -> None:
    ds = run(IDLE, [at(0, ready=0), at(1, ready=0, wake=True)])
    assert ds[0].desired == 0
    assert (ds[1].desired, ds[1].reason) == (1, "wake")


def test_parked_requests_at_zero_ask_for_one_replica_at_once() -> None:
    ds = run(IDLE, [at(0, ready=0), at(1, ready=0, parked=3)])
    assert (ds[1].desired, ds[1].reason) == (1, "wake")
    assert "3 requests parked" in ds[1].detail


def test_no_wake_no_traffic_stays_at_zero() -> None:
    ds = run(IDLE, [at(0, ready=0), at(1, ready=0)])
    assert ds[1].desired == 0


def test_with_min_zero_no_traffic_reaches_zero_after_the_delay() -> None:
    s = replace(TEN, scale_down_delay_s=30.0, scale_down_step=1)
    ds = follow(s, lambda s: 2.0 if s <= 10 else 0.0, range(0, 90, 10))
    # The last want of 2 was at +10: held through +30, then 2 -> 1 -> 0, one per tick.
    assert [ds[t].desired for t in (0, 10, 20, 30)] == [2, 2, 2, 2]
    assert ds[80].desired == 0


def test_with_min_one_no_traffic_stops_at_one() -> None:
    s = replace(TEN, min_replica=1, scale_down_delay_s=30.0)
    ds = follow(s, lambda s: 2.0 if s <= 10 else 0.0, range(0, 90, 10))
    assert (ds[80].desired, ds[80].reason) == (1, "min_replica")


# -- Settings.from_proto ---------------------------------------------------------------------


def test_from_proto_zero_fields() -> None:
    s = Settings.from_proto(deploy_pb2.AutoscalingSettings())
    # Zero means the default ...
    assert s.autoscaling_window_s == 60.0
    assert s.concurrency_target == 1
    assert s.target_utilization_percentage == 70
    assert s.panic_threshold == 2.0
    assert s.scale_down_step == 1
    assert s.mode is Mode.CONCURRENCY
    # ... or off, where 0 is a value of its own.
    assert s.target_in_flight_tokens == 0
    assert s.panic_window_s == 0.0
    assert s.ttft_p90_target_ms == 0.0 and s.itl_p90_target_ms == 0.0
    assert s.scale_down_delay_s == 0.0
    assert (s.min_replica, s.max_replica) == (0, 0)


def test_from_proto_reads_set_fields() -> None:
    s = Settings.from_proto(deploy_pb2.AutoscalingSettings(
        min_replica=2, max_replica=8, autoscaling_window=30, scale_down_delay=120,
        concurrency_target=4, target_utilization_percentage=90, target_in_flight_tokens=5000,
        scaling_mode="sla", panic_window=10, panic_threshold_percentage=300,
        ttft_p90_target_ms=400.0, itl_p90_target_ms=40.0, cold_start_lead=True,
        scale_down_step=3))
    assert s == Settings(
        min_replica=2, max_replica=8, autoscaling_window_s=30.0, scale_down_delay_s=120.0,
        concurrency_target=4, target_utilization_percentage=90, target_in_flight_tokens=5000,
        mode=Mode.SLA, panic_window_s=10.0, panic_threshold=3.0, ttft_p90_target_ms=400.0,
        itl_p90_target_ms=40.0, cold_start_lead=True, scale_down_step=3)


def test_from_proto_max_replica_is_at_least_min_replica() -> None:
    s = Settings.from_proto(deploy_pb2.AutoscalingSettings(min_replica=3, max_replica=1))
    assert (s.min_replica, s.max_replica) == (3, 3)


def test_a_deployment_file_without_autoscaling_fields_gets_the_core_defaults() -> None:
    assert Settings.from_proto(Autoscaling().to_proto()) == Settings()
