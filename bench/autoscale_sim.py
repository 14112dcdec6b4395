"""Virtual-time fleet for the autoscaling benchmark: continuous-batching replicas on the sim
timing profile, a least-outstanding router that parks requests while no replica is ready, and
the 1 s tick loop that asks a policy for the desired count (pure: no I/O, no clock).

A replica, per engine step: one decode token for every running request plus prefill chunks of
the waiting ones (FIFO) within `max_num_batched_tokens`; a request is admitted while fewer
than `max_num_seqs` run and its whole prompt + output fits the KV left (reserved up front, so
nothing is preempted). Step time is `step_duration` of the sim's `TimingProfile`. Decode-only
stretches are fast-forwarded to the next finish, arrival or tick end (context growth inside a
stretch is taken at its midpoint). A replica costs from launch to stop: cold start, serving
and, once scaled down, the drain of its running requests.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from services.autoscaler.core.decide import State, decide
from services.autoscaler.core.settings import Settings
from services.autoscaler.core.signals import Capacity, Latency, Sample, Tick, p90
from services.runtime.engines.sim.core.timing import (
    LLAMA_3_1_8B_H100,
    StepLoad,
    TimingProfile,
    attention_pairs,
    decode_time,
    step_duration,
)

# Finished requests whose latency the autoscaler sees (services/autoscaler/inputs.py).
LATENCY_WINDOW_S = 20.0
# One H100 80GB's KV for Llama-3.1-8B (bench/replay.py's figure), in 16-token blocks.
KV_TOKENS = 26_000 * 16


@dataclass(frozen=True, slots=True)
class Workload:
    """Requests sorted by arrival (seconds from 0)."""

    arrival: list[float]
    prompt: list[int]
    output: list[int]

    def __len__(self) -> int:
        return len(self.arrival)


@dataclass(frozen=True, slots=True)
class FleetParams:
    profile: TimingProfile = LLAMA_3_1_8B_H100
    max_num_seqs: int = 256  # SimConfig's default
    max_num_batched_tokens: int = 8192  # SimConfig's default
    kv_tokens: int = KV_TOKENS
    max_model_len: int = 131_072
    cold_start_s: float = 30.0
    ttft_slo_ms: float = 1000.0
    itl_slo_ms: float = 100.0


@dataclass(slots=True)
class Outcome:
    """Per request: -1 until known."""

    first: list[float]
    finish: list[float]
    parked: list[bool]
    cold: list[bool]
    rejected: list[bool]

    @classmethod
    def empty(cls, n: int) -> Outcome:
        return cls([-1.0] * n, [-1.0] * n, [False] * n, [False] * n, [False] * n)


class Replica:
    """One simulated engine; `advance` runs it to a time, admitting the arrivals given."""

    def __init__(self, launch: float, ready_at: float, fp: FleetParams, w: Workload,
                 out: Outcome, on_finish: Callable[[int, float], None]) -> None:
        self.launch, self.ready_at, self.stop_at = launch, ready_at, math.inf
        self.draining = False
        self.drain_from = math.inf
        self.fp, self.w, self.out, self.on_finish = fp, w, out, on_finish
        self.t = ready_at
        self.waiting: deque[int] = deque()
        self.prefilling: list[list[int]] = []  # [request, tokens done]
        self.decoding: list[tuple[int, int]] = []  # heap of (finish step, request)
        self.g = 0  # decode steps so far
        self.ctx_base = 0  # sum(prompt + 1 - g at start): context = ctx_base + n * g
        self.kv = 0
        self.outstanding = 0
        self.generated = 0
        self.last_finish = ready_at

    def _admit(self) -> None:
        fp, w = self.fp, self.w
        while self.waiting:
            i = self.waiting[0]
            need = w.prompt[i] + w.output[i]
            if (len(self.prefilling) + len(self.decoding) >= fp.max_num_seqs
                    or self.kv + need > fp.kv_tokens):
                return
            self.waiting.popleft()
            self.kv += need
            self.prefilling.append([i, 0])

    def _finish(self, i: int, t: float) -> None:
        self.out.finish[i] = t
        self.last_finish = t
        self.kv -= self.w.prompt[i] + self.w.output[i]
        self.outstanding -= 1
        self.on_finish(i, t)

    def _decoders_done(self) -> None:
        while self.decoding and self.decoding[0][0] <= self.g:
            f, i = heapq.heappop(self.decoding)
            self.ctx_base -= self.w.prompt[i] + self.w.output[i] - f  # prompt + 1 - g_join
            self._finish(i, self.t)

    def _prefill_step(self) -> None:
        fp, w = self.fp, self.w
        n = len(self.decoding)
        budget = fp.max_num_batched_tokens - n
        tokens = pairs = 0
        done: list[int] = []
        for item in self.prefilling:
            if budget <= 0:
                break
            i, have = item
            c = min(w.prompt[i] - have, budget)
            tokens += c
            pairs += attention_pairs(have, c)
            budget -= c
            item[1] = have + c
            if item[1] >= w.prompt[i]:
                done.append(i)
        ctx = self.ctx_base + n * self.g
        self.t += step_duration(fp.profile, StepLoad(tokens, pairs, n, ctx))
        if n:
            self.g += 1
            self.generated += n
            self._decoders_done()
        if done:
            gone = set(done)
            self.prefilling = [p for p in self.prefilling if p[0] not in gone]
            self.generated += len(done)
        for i in done:
            self.out.first[i] = self.t
            if w.output[i] <= 1:
                self._finish(i, self.t)
            else:
                heapq.heappush(self.decoding, (self.g + w.output[i] - 1, i))
                self.ctx_base += w.prompt[i] + 1 - self.g  # context at step g' adds g' - g

    def _decode_run(self, horizon: float) -> None:
        prof = self.fp.profile
        n = len(self.decoding)
        k_fin = self.decoding[0][0] - self.g
        ctx = self.ctx_base + n * self.g
        base = prof.step_overhead_s + decode_time(prof, n)
        d = base + prof.decode_s_per_context_token * ctx
        k = max(1, min(k_fin, math.ceil((horizon - self.t) / d)))
        d = base + prof.decode_s_per_context_token * (ctx + n * (k - 1) / 2)
        self.t += k * d
        self.g += k
        self.generated += n * k
        self._decoders_done()

    def advance(self, until: float, arrivals: list[tuple[float, int]]) -> None:
        """Run to `until` (a step may end past it); `arrivals` (time, request) ascending."""
        ai = 0
        while True:
            while ai < len(arrivals) and arrivals[ai][0] <= self.t:
                self.waiting.append(arrivals[ai][1])
                ai += 1
            self._admit()
            nxt = arrivals[ai][0] if ai < len(arrivals) else math.inf
            if not self.prefilling and not self.decoding:
                if nxt >= until:
                    self.t = max(self.t, until)
                    return
                self.t = nxt
                continue
            if self.t >= until:
                for a in arrivals[ai:]:
                    self.waiting.append(a[1])
                return
            if self.prefilling:
                self._prefill_step()
            else:
                self._decode_run(min(until, nxt) if not self.waiting else until)


@dataclass(slots=True)
class Result:
    policy: str
    outcome: Outcome
    replica_seconds: float
    scale_events: int
    max_replicas: int
    end_s: float
    desired: list[int] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class Policy:
    """`settings` None: a static fleet of `static` replicas."""

    name: str
    settings: Settings | None = None
    static: int = 0
    capacity: Capacity | None = None
    initial: int = 1


class _Bins:
    """Time-averaged requests in system per 1 s tick, from +1/-1 events (difference array)."""

    def __init__(self, n: int) -> None:
        self.partial = [0.0] * (n + 2)
        self.delta = [0] * (n + 2)
        self.running = 0
        self.n = n

    def add(self, t: float, sign: int) -> None:
        b = min(int(t), self.n)
        self.partial[b] += sign * (b + 1 - t)
        self.delta[b + 1] += sign

    def mean(self, b: int) -> float:
        self.running += self.delta[b]
        return self.running + self.partial[b]


def simulate(w: Workload, fp: FleetParams, policy: Policy, horizon_s: float | None = None
             ) -> Result:
    """Replay `w` under `policy`, ticking each second until every request is done."""
    n = len(w)
    out = Outcome.empty(n)
    last = w.arrival[-1] if n else 0.0
    limit = int(horizon_s if horizon_s is not None else last + 3600) + 2
    bins = _Bins(limit + 1)
    recent: deque[tuple[float, float, float | None]] = deque()

    def on_finish(i: int, t: float) -> None:
        bins.add(t, -1)
        ttft = (out.first[i] - w.arrival[i]) * 1000
        o = w.output[i]
        itl = (t - out.first[i]) * 1000 / (o - 1) if o > 1 else None
        recent.append((t, ttft, itl))

    static = policy.settings is None
    count0 = policy.static if static else policy.initial
    reps = [Replica(0.0, 0.0, fp, w, out, on_finish) for _ in range(count0)]
    state = State(desired=count0)
    parked: deque[int] = deque()
    ai, done_n, events, desired_log = 0, 0, 0, []
    generated = 0
    too_long = [w.prompt[i] + w.output[i] > min(fp.max_model_len, fp.kv_tokens)
                for i in range(n)]
    tick = 0
    while tick < limit:
        t0, t1 = float(tick), float(tick + 1)
        live = [r for r in reps if not r.draining]
        starting_soon = sorted((r for r in live if t0 < r.ready_at < t1), key=lambda r: r.ready_at)
        ready = [r for r in live if r.ready_at <= t0]
        batches: dict[int, list[tuple[float, int]]] = {id(r): [] for r in reps}


        def send(i: int, t: float, pool: list[Replica],
                 batches: dict[int, list[tuple[float, int]]] = batches) -> None:
            r = min(pool, key=_load)
            r.outstanding += 1
            batches[id(r)].append((t, i))

        if ready and parked:
            while parked:
                send(parked.popleft(), t0, ready)
        si = 0
        while ai < n and w.arrival[ai] < t1:
            a = w.arrival[ai]
            while si < len(starting_soon) and starting_soon[si].ready_at <= a:
                ready.append(starting_soon[si])
                while parked:
                    send(parked.popleft(), starting_soon[si].ready_at, ready)
                si += 1
            bins.add(a, +1)
            if too_long[ai]:
                out.rejected[ai] = True
                bins.add(a, -1)
                done_n += 1
            elif ready:
                send(ai, a, ready)
            else:
                parked.append(ai)
                out.parked[ai] = True
                out.cold[ai] = any(r.ready_at > a for r in live)
            ai += 1
        for r in starting_soon[si:]:
            ready.append(r)
            while parked:
                send(parked.popleft(), r.ready_at, ready)
        for r in reps:
            if r.ready_at < t1 and r.stop_at == math.inf:
                before = r.outstanding
                r.advance(t1, batches[id(r)])
                done_n += before - r.outstanding
                if r.draining and r.outstanding == 0:
                    r.stop_at = max(r.drain_from, r.last_finish)
        while recent and recent[0][0] < t1 - LATENCY_WINDOW_S:
            recent.popleft()
        conc = bins.mean(tick)
        tick += 1
        if ai >= n and done_n >= n:
            break
        if static:
            continue
        assert policy.settings is not None
        live = [r for r in reps if not r.draining]
        n_ready = sum(1 for r in live if r.ready_at <= t1)
        lat = Latency(p90([x[1] for x in recent]),
                      p90([x[2] for x in recent if x[2] is not None]))
        j0, j1 = bisect_left(w.arrival, t0), bisect_left(w.arrival, t1)
        total = sum(r.generated for r in reps)
        sample = Sample(t1, conc, 0.0, float(j1 - j0), float(sum(w.prompt[j0:j1])),
                        float(total - generated), len(parked))
        generated = total
        d = decide(policy.settings, state, Tick(
            now=t1, sample=sample, ready=n_ready, starting=len(live) - n_ready,
            cold_start_s=fp.cold_start_s, latency=lat, capacity=policy.capacity))
        desired_log.append(d.desired)
        if desired_log[-2:-1] and desired_log[-2] != d.desired:
            events += 1
        _apply(reps, live, d.desired, t1, fp, w, out, on_finish)
    end = float(tick)
    cost = 0.0
    for r in reps:
        cost += min(r.stop_at, end) - r.launch
    return Result(policy.name, out, cost, events,
                  max(desired_log, default=count0), end, desired_log)


def _load(r: Replica) -> int:
    return r.outstanding


def _apply(reps: list[Replica], live: list[Replica], desired: int, now: float, fp: FleetParams,
           w: Workload, out: Outcome, on_finish: Callable[[int, float], None]) -> None:
    """Launch or retire replicas to reach `desired`: starting ones go first (at once), then
    the ready ones with least work, which drain."""
    if desired > len(live):
        for _ in range(desired - len(live)):
            reps.append(Replica(now, now + fp.cold_start_s, fp, w, out, on_finish))
        return
    excess = len(live) - desired
    for r in sorted(live, key=lambda r: (r.ready_at <= now, r.outstanding, -r.launch)):
        if excess <= 0:
            break
        r.draining, r.drain_from = True, now
        if r.ready_at > now or r.outstanding == 0:
            r.stop_at = now
        excess -= 1
