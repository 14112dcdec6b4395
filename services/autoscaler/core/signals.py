"""What the decision core sees each tick: demand summed over routers, latency observed, the
per-replica capacity estimate, and cold-start times read from replica records (no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from basalt.pb import deploy_pb2, events_pb2


@dataclass(frozen=True, slots=True)
class Sample:
    """One tick of a deployment's demand, summed over every router."""

    ts: float
    concurrency: float  # time-averaged in flight + queued + parked
    tokens: float = 0.0  # time-averaged prompt + generated tokens of those requests
    arrivals_per_s: float = 0.0
    prompt_tokens_per_s: float = 0.0  # of requests arriving (prefill work)
    completion_tokens_per_s: float = 0.0  # generated (decode work)
    parked: int = 0


@dataclass(frozen=True, slots=True)
class Capacity:
    """What one replica carries within the SLA: prefill and decode tokens per second."""

    prefill_tokens_per_s: float
    decode_tokens_per_s: float


@dataclass(frozen=True, slots=True)
class Latency:
    """p90s observed over the recent past (None: no request finished)."""

    ttft_p90_ms: float | None = None
    itl_p90_ms: float | None = None


@dataclass(frozen=True, slots=True)
class Tick:
    """Everything `decide` needs about one deployment at time `now`."""

    now: float
    sample: Sample
    ready: int
    starting: int = 0
    cold_start_s: float | None = None  # median launch -> ready of its replicas
    wake: bool = False
    latency: Latency = Latency()
    capacity: Capacity | None = None  # a profiled prior (SLA mode); the core also learns one


def combine(reports: Iterable[deploy_pb2.DemandReport], now: float, max_age_s: float = 3.0
            ) -> Sample:
    """The deployment's demand: each router's latest report (ignored past `max_age_s`), summed."""
    conc = tokens = arrivals = prompt = completion = 0.0
    parked = 0
    for r in reports:
        if now - r.ts > max_age_s:
            continue
        interval = r.interval_s or 1.0
        conc += max(r.avg_concurrency, r.in_flight + r.queued + r.parked)
        tokens += r.avg_in_flight_tokens
        arrivals += r.arrivals / interval
        prompt += r.prompt_tokens / interval
        completion += r.completion_tokens / interval
        parked += r.parked
    return Sample(now, conc, tokens, arrivals, prompt, completion, parked)


def p90(values: Sequence[float]) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(0.9 * len(ordered)) - 1)]


def latency_of(records: Iterable[deploy_pb2.RequestRecord]) -> Latency:
    """TTFT and ITL p90 of finished requests (ITL per request: decode time / (tokens - 1))."""
    ttft, itl = [], []
    for r in records:
        if r.outcome != "ok":
            continue
        if r.ttft_ms > 0:
            ttft.append(r.ttft_ms)
        if r.completion_tokens > 1 and r.e2e_ms > r.ttft_ms:
            itl.append((r.e2e_ms - r.ttft_ms) / (r.completion_tokens - 1))
    return Latency(p90(ttft), p90(itl))


def cold_start_s(records: Iterable[events_pb2.ReplicaRecord]) -> float | None:
    """Median seconds from process start to READY over replicas that reported both."""
    times = sorted(r.ready_ts - r.started_ts for r in records
                   if r.started_ts > 0 and r.ready_ts >= r.started_ts)
    return times[len(times) // 2] if times else None
