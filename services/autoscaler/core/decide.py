"""One autoscaling decision for one deployment at one tick: desired replicas and the reason
(no I/O; time comes in with the tick, and `State` is everything remembered between ticks).

The rule, in order:
1. **Want** from demand. Concurrency mode (Baseten): ceil(average concurrency over
   `autoscaling_window` / (`concurrency_target` x `target_utilization_percentage`/100)), and,
   with `target_in_flight_tokens`, at least ceil(average tokens in flight / (that target x
   utilization)). SLA mode: prefill need (prompt tokens/s over the per-replica prefill capacity
   at the TTFT target) plus decode need (generated tokens/s over the decode capacity at the ITL
   target), each corrected by observed vs target latency; falls back to the concurrency rule
   until a capacity is known.
2. **Panic** (Knative KPA): the same want over the short `panic_window`; at or above
   `panic_threshold` x ready replicas it enters panic, where the count only grows; it leaves
   after a whole `autoscaling_window` without the condition.
3. **Cold-start lead**: with demand rising, the want at `now + cold start time` on the
   window's trend, so replicas are ready when the demand arrives.
4. **Wake**: a wake asks for at least one replica.
5. **Scale-down delay**: the count never falls below the largest want of the last
   `scale_down_delay` seconds (and not at all in the first window after a restart, while the
   window refills).
6. **Clamp** to [`min_replica`, `max_replica`], then at most `scale_down_step` replicas go per tick.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

from .settings import Mode, Settings
from .signals import Capacity, Sample, Tick

# A want a hair over an integer (float noise) does not round up a whole replica.
_EPS = 1e-9
# The correction factor stays within these bounds (observed / target latency): it only ever
# adds replicas; a capacity set too low is the prior's to fix.
CORRECTION_MIN, CORRECTION_MAX = 1.0, 4.0
# Weight of the newest observation in the correction's moving average.
CORRECTION_ALPHA = 0.3
# Samples the trend (cold-start lead) is fitted over, at most.
TREND_SPAN_S = 30.0
MIN_TREND_POINTS = 5


@dataclass(slots=True)
class State:
    """What the core remembers about one deployment between ticks."""

    samples: deque[Sample] = field(default_factory=deque)
    # (ts, replicas), ts ascending and replicas descending: the largest want since each ts.
    held: list[tuple[float, int]] = field(default_factory=list)
    panic_since: float | None = None
    panic_last: float = 0.0
    desired: int | None = None
    first_tick: float | None = None
    correction_ttft: float = 1.0
    correction_itl: float = 1.0
    learned: Capacity | None = None


@dataclass(frozen=True, slots=True)
class Decision:
    desired: int
    reason: str  # demand, panic, sla, cold_start_lead, wake, scale_down_delay, warming_up, ...
    detail: str
    panic: bool
    want: int  # the demand's count before delay, clamps and step cap


def _ceil(x: float) -> int:
    return max(0, math.ceil(x - _EPS))


def _mean(samples: list[Sample], attr: str) -> float:
    return sum(getattr(s, attr) for s in samples) / len(samples) if samples else 0.0


def _within(state: State, now: float, span_s: float) -> list[Sample]:
    return [s for s in state.samples if s.ts > now - span_s]


def concurrency_want(settings: Settings, samples: list[Sample]) -> int:
    """Baseten's rule over `samples`, with the token target when set."""
    want = _ceil(_mean(samples, "concurrency") / settings.per_replica_concurrency)
    if settings.target_in_flight_tokens:
        per = settings.target_in_flight_tokens * settings.utilization
        want = max(want, _ceil(_mean(samples, "tokens") / per))
    return want


def _update_correction(settings: Settings, state: State, tick: Tick) -> None:
    """Observed / target latency p90, smoothed: above 1 the capacity was overestimated and
    the need grows by that factor; it returns to 1 while latency is within target."""
    if tick.ready == 0:
        return
    lat = tick.latency
    for obs, target, name in ((lat.ttft_p90_ms, settings.ttft_p90_target_ms, "correction_ttft"),
                              (lat.itl_p90_ms, settings.itl_p90_target_ms, "correction_itl")):
        if obs is None or target <= 0:
            continue
        ratio = min(CORRECTION_MAX, max(CORRECTION_MIN, obs / target))
        old = getattr(state, name)
        setattr(state, name, (1 - CORRECTION_ALPHA) * old + CORRECTION_ALPHA * ratio)


def _learn_capacity(settings: Settings, state: State, tick: Tick,
                    window: list[Sample]) -> None:
    """While replicas meet both targets they carry at least this much: the learned capacity
    is the largest window-average per-replica throughput seen within the SLA (a window
    average, so one burst second is not taken for capacity)."""
    lat = tick.latency
    if tick.ready == 0 or lat.ttft_p90_ms is None:
        return
    if lat.ttft_p90_ms > settings.ttft_p90_target_ms:
        return
    if settings.itl_p90_target_ms and (lat.itl_p90_ms or 0.0) > settings.itl_p90_target_ms:
        return
    pre = _mean(window, "prompt_tokens_per_s") / tick.ready
    dec = _mean(window, "completion_tokens_per_s") / tick.ready
    old = state.learned or Capacity(0.0, 0.0)
    state.learned = Capacity(max(old.prefill_tokens_per_s, pre),
                             max(old.decode_tokens_per_s, dec))


def _need(settings: Settings, state: State, s: Sample, capacity: Capacity | None) -> float:
    """Replicas one sample needs (fractional): SLA mode with a capacity sizes prefill and
    decode work over their corrected capacities at the target utilization; else Baseten's
    concurrency (and token) target."""
    if capacity is not None:
        prefill = decode = 0.0
        if capacity.prefill_tokens_per_s > 0:
            prefill = s.prompt_tokens_per_s * state.correction_ttft / capacity.prefill_tokens_per_s
        if capacity.decode_tokens_per_s > 0:
            decode = s.completion_tokens_per_s * state.correction_itl / capacity.decode_tokens_per_s
        return (prefill + decode) / settings.utilization
    need = s.concurrency / settings.per_replica_concurrency
    if settings.target_in_flight_tokens:
        need = max(need, s.tokens / (settings.target_in_flight_tokens * settings.utilization))
    return need


def _mean_need(settings: Settings, state: State, samples: list[Sample],
               capacity: Capacity | None) -> int:
    if not samples:
        return 0
    want = _ceil(sum(_need(settings, state, s, capacity) for s in samples) / len(samples))
    if want == 0 and capacity is not None and _mean(samples, "concurrency") > 0:
        want = 1  # requests in flight want a replica, however little work they are
    return want


def sla_want(settings: Settings, state: State, samples: list[Sample],
             capacity: Capacity) -> tuple[int, str]:
    """Prefill need + decode need, each over its corrected capacity; names the larger."""
    prefill = decode = 0.0
    if capacity.prefill_tokens_per_s > 0:
        prefill = (_mean(samples, "prompt_tokens_per_s") * state.correction_ttft
                   / capacity.prefill_tokens_per_s / settings.utilization)
    if capacity.decode_tokens_per_s > 0:
        decode = (_mean(samples, "completion_tokens_per_s") * state.correction_itl
                  / capacity.decode_tokens_per_s / settings.utilization)
    want = _mean_need(settings, state, samples, capacity)
    heavy = "prefill" if prefill >= decode else "decode"
    return want, f"prefill {prefill:.2f} + decode {decode:.2f} replicas ({heavy}-heavy)"


def _capacity(settings: Settings, state: State, tick: Tick) -> Capacity | None:
    """SLA mode's per-replica capacity: the profiled prior when given, else the learned one
    (None: concurrency mode, or nothing known yet)."""
    if settings.mode is not Mode.SLA or settings.ttft_p90_target_ms <= 0:
        return None
    return tick.capacity or state.learned


def _demand_want(settings: Settings, state: State, tick: Tick,
                 window: list[Sample]) -> tuple[int, str, str]:
    if settings.mode is Mode.SLA and settings.ttft_p90_target_ms > 0:
        _update_correction(settings, state, tick)
        _learn_capacity(settings, state, tick, window)
        capacity = _capacity(settings, state, tick)
        if capacity is not None:
            want, detail = sla_want(settings, state, window, capacity)
            return want, "sla", detail
    want = concurrency_want(settings, window)
    detail = (f"avg concurrency {_mean(window, 'concurrency'):.2f} over "
              f"{settings.autoscaling_window_s:g}s / {settings.per_replica_concurrency:g} per replica")
    return want, "demand", detail


def _panic(settings: Settings, state: State, tick: Tick, want: int) -> tuple[int, bool]:
    """Knative's panic: returns the (possibly larger) want and whether in panic."""
    if settings.panic_window_s <= 0:
        return want, False
    short = _within(state, tick.now, settings.panic_window_s)
    capacity = _capacity(settings, state, tick)
    panic_want = (_mean_need(settings, state, short, capacity) if capacity is not None
                  else concurrency_want(settings, short))
    if panic_want >= settings.panic_threshold * max(tick.ready, 1) and panic_want > tick.ready:
        if state.panic_since is None:
            state.panic_since = tick.now
        state.panic_last = tick.now
    elif (state.panic_since is not None
          and tick.now - state.panic_last >= settings.autoscaling_window_s):
        state.panic_since = None
    if state.panic_since is None:
        return want, False
    return max(want, panic_want, state.desired or 0), True


def _trend_want(settings: Settings, state: State, tick: Tick) -> int | None:
    """The need `cold_start_s` ahead on a rising least-squares trend of the per-tick need,
    from the recent average (None: flat, falling, or too little data). It adds at most the
    recent need again: a trend fitted on noise must not order a fleet."""
    lead = tick.cold_start_s
    if not settings.cold_start_lead or lead is None or lead <= 0:
        return None
    pts = _within(state, tick.now, min(settings.autoscaling_window_s, TREND_SPAN_S))
    if len(pts) < MIN_TREND_POINTS:
        return None
    capacity = _capacity(settings, state, tick)
    needs = [_need(settings, state, p, capacity) for p in pts]
    mt = sum(p.ts for p in pts) / len(pts)
    mn = sum(needs) / len(needs)
    var = sum((p.ts - mt) ** 2 for p in pts)
    if var <= 0:
        return None
    slope = sum((p.ts - mt) * (n - mn) for p, n in zip(pts, needs, strict=True)) / var
    if slope <= 0:
        return None
    recent = needs[-max(1, min(len(needs), int(settings.panic_window_s) or 6)):]
    base = sum(recent) / len(recent)
    return _ceil(base + min(slope * lead, base))


def _hold(state: State, now: float, want: int, delay_s: float) -> int:
    """Record `want` at `now`; return the largest want of the last `delay_s` seconds.

    `state.held` keeps (ts, want) with ts ascending and want strictly descending: each entry's
    want is larger than every want after it, so the first entry inside the delay is the max."""
    held = state.held
    while held and held[-1][1] <= want:
        held.pop()
    held.append((now, want))
    while len(held) > 1 and held[0][0] <= now - delay_s:
        held.pop(0)
    return held[0][1]


def decide(settings: Settings, state: State, tick: Tick) -> Decision:
    """The desired replicas for one deployment at `tick.now`; updates `state`."""
    now = tick.now
    if state.first_tick is None:
        state.first_tick = now
    state.samples.append(tick.sample)
    keep = max(settings.autoscaling_window_s, settings.panic_window_s, TREND_SPAN_S)
    while state.samples and state.samples[0].ts <= now - keep:
        state.samples.popleft()
    window = _within(state, now, settings.autoscaling_window_s)

    want, reason, detail = _demand_want(settings, state, tick, window)
    want, panic = _panic(settings, state, tick, want)
    if panic and want > 0:
        reason, detail = "panic", f"{detail}; panic since {now - (state.panic_since or now):.0f}s"
    ahead = _trend_want(settings, state, tick)
    if ahead is not None and ahead > want and ahead > (state.desired or 0):
        want, reason = ahead, "cold_start_lead"
        detail = f"rising demand, {tick.cold_start_s:.0f}s cold start ahead: {ahead} replicas"
    if tick.wake and want < 1:
        want, reason, detail = 1, "wake", "a request waits with no ready replica"
    if tick.sample.parked and want < 1:
        want, reason, detail = 1, "wake", f"{tick.sample.parked} requests parked"
    raw = want

    target = _hold(state, now, want, settings.scale_down_delay_s)
    if target > want:
        reason, detail = "scale_down_delay", (
            f"wanted {want}, held at {target} needed within the last "
            f"{settings.scale_down_delay_s:g}s")
    current = state.desired
    warming = now - state.first_tick < settings.autoscaling_window_s
    if current is not None and warming and target < current:
        target, reason, detail = current, "warming_up", "window not yet full: no scale-down"

    clamped = min(max(target, settings.min_replica), settings.max_replica)
    if clamped != target:
        bound = "min_replica" if clamped > target else "max_replica"
        reason, detail = bound, f"{detail}; clamped to {bound} {clamped}"
    target = clamped
    if current is not None and target < current - settings.scale_down_step:
        target = current - settings.scale_down_step
        detail = f"{detail}; at most {settings.scale_down_step} per tick"
    if current is not None and target == current and reason not in ("warming_up",):
        reason = "steady" if reason == "demand" else reason
    state.desired = target
    return Decision(target, reason, detail, panic, raw)
