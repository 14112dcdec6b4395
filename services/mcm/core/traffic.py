"""The dashboard's traffic figures from the routers' request records (pure: no I/O; time comes
in as `now`).

The router publishes one `RequestRecord` per finished request. `TrafficBook` keeps, in bounded
memory whatever the load:

- a ring of the last `recent_limit` requests (the request log);
- per deployment, `bucket_s`-second buckets over the last `horizon_s` (at most
  horizon_s / bucket_s + 1 buckets each, and at most `max_deployments` deployments: the one
  seen least recently goes first), each holding counts, token sums and latency histograms.

Latency percentiles come from log-spaced histograms (`LatencyHistogram`: bins 10% wide), so
buckets merge into any window exactly and a bucket costs the same for 1 request or 10,000;
a percentile is the bin's geometric middle, within 5% of the true value.

A request is bucketed by `now` when it is observed (the control plane's clock), not by the
record's `ts` (the router's): routers with skewed clocks would scatter their requests across
buckets, and a core-NATS record arrives within milliseconds of its end anyway.

Per request, the inter-token latency is (e2e_ms - ttft_ms) / (completion_tokens - 1) when more
than one token came: the router sees the stream, not each token's time, so this is the mean
gap of that request.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from basalt.pb import deploy_pb2

OK = "ok"
QUANTILES = (0.5, 0.9, 0.99)
# Histogram bins: [LOW_MS * GROWTH**i, LOW_MS * GROWTH**(i+1)); below LOW_MS is bin 0,
# above LOW_MS * GROWTH**MAX_BIN the last bin (0.1 ms .. ~28 h: any latency a request has).
LOW_MS = 0.1
GROWTH = 1.1
MAX_BIN = 250
_LOG_GROWTH = math.log(GROWTH)


@dataclass(frozen=True, slots=True)
class Request:
    """One finished request as the feed keeps it (a `RequestRecord`, plus its ITL)."""

    ts: float
    request_id: str
    deployment_id: str
    model: str
    lora_name: str
    replica_id: str
    outcome: str
    queue_wait_ms: float
    ttft_ms: float
    e2e_ms: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    itl_ms: float | None

    def view(self) -> dict[str, Any]:
        return {
            "ts": self.ts, "request_id": self.request_id, "deployment_id": self.deployment_id,
            "model": self.model, "lora_name": self.lora_name, "replica_id": self.replica_id,
            "outcome": self.outcome, "queue_wait_ms": self.queue_wait_ms,
            "ttft_ms": self.ttft_ms, "e2e_ms": self.e2e_ms, "itl_ms": self.itl_ms,
            "prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
        }


def itl_of(e2e_ms: float, ttft_ms: float, completion_tokens: int) -> float | None:
    """The request's mean inter-token latency, or None where it has no meaning (one token or
    none, no first token, or an end before the first token)."""
    if completion_tokens < 2 or ttft_ms <= 0 or e2e_ms < ttft_ms:
        return None
    return (e2e_ms - ttft_ms) / (completion_tokens - 1)


def request_of(rec: deploy_pb2.RequestRecord) -> Request:
    return Request(
        ts=rec.ts, request_id=rec.request_id, deployment_id=rec.deployment_id,
        model=rec.model, lora_name=rec.lora_name, replica_id=rec.replica_id,
        outcome=rec.outcome or "unknown", queue_wait_ms=rec.queue_wait_ms,
        ttft_ms=rec.ttft_ms, e2e_ms=rec.e2e_ms, prompt_tokens=rec.prompt_tokens,
        completion_tokens=rec.completion_tokens, cached_tokens=rec.cached_tokens,
        itl_ms=itl_of(rec.e2e_ms, rec.ttft_ms, rec.completion_tokens),
    )


@dataclass(slots=True)
class LatencyHistogram:
    """Counts per log-spaced bin (sparse: only bins that were hit)."""

    counts: dict[int, int] = field(default_factory=dict)
    total: int = 0

    @staticmethod
    def bin_of(ms: float) -> int:
        if ms <= LOW_MS:
            return 0
        return min(MAX_BIN, int(math.log(ms / LOW_MS) / _LOG_GROWTH))

    @staticmethod
    def value_of(b: int) -> float:
        """The bin's geometric middle (ms)."""
        return LOW_MS * GROWTH ** (b + 0.5)

    def add(self, ms: float) -> None:
        b = self.bin_of(ms)
        self.counts[b] = self.counts.get(b, 0) + 1
        self.total += 1

    def merge(self, other: LatencyHistogram) -> None:
        for b, n in other.counts.items():
            self.counts[b] = self.counts.get(b, 0) + n
        self.total += other.total

    def quantile(self, q: float) -> float | None:
        """The q-quantile (0 < q <= 1) in ms, rounded to 0.01; None when empty."""
        if self.total == 0:
            return None
        rank = max(1, math.ceil(q * self.total))
        seen = 0
        for b in sorted(self.counts):
            seen += self.counts[b]
            if seen >= rank:
                return round(self.value_of(b), 2)
        raise AssertionError("unreachable: counts sum to total")

    def quantiles(self) -> dict[str, float | None]:
        return {f"p{round(q * 100)}": self.quantile(q) for q in QUANTILES}


@dataclass(slots=True)
class Bucket:
    """What the requests observed in one `bucket_s` interval add up to."""

    requests: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    ttft: LatencyHistogram = field(default_factory=LatencyHistogram)
    itl: LatencyHistogram = field(default_factory=LatencyHistogram)

    def add(self, r: Request) -> None:
        self.requests += 1
        self.outcomes[r.outcome] = self.outcomes.get(r.outcome, 0) + 1
        self.prompt_tokens += r.prompt_tokens
        self.cached_tokens += r.cached_tokens
        self.completion_tokens += r.completion_tokens
        if r.ttft_ms > 0:
            self.ttft.add(r.ttft_ms)
        if r.itl_ms is not None:
            self.itl.add(r.itl_ms)

    def merge(self, other: Bucket) -> None:
        self.requests += other.requests
        for k, n in other.outcomes.items():
            self.outcomes[k] = self.outcomes.get(k, 0) + n
        self.prompt_tokens += other.prompt_tokens
        self.cached_tokens += other.cached_tokens
        self.completion_tokens += other.completion_tokens
        self.ttft.merge(other.ttft)
        self.itl.merge(other.itl)

    def figures(self, seconds: float) -> dict[str, Any]:
        """The bucket's (or a window's) figures; rates over `seconds`."""
        errors = {k: n for k, n in sorted(self.outcomes.items()) if k != OK}
        n = self.requests
        return {
            "requests": n, "rate_per_s": round(n / seconds, 4) if seconds > 0 else 0.0,
            "outcomes": dict(sorted(self.outcomes.items())),
            "error_rate": round(sum(errors.values()) / n, 4) if n else None,
            "error_rate_by_outcome": {k: round(c / n, 4) for k, c in errors.items()},
            "prompt_tokens": self.prompt_tokens, "cached_tokens": self.cached_tokens,
            "completion_tokens": self.completion_tokens,
            "prefix_hit_ratio": (round(self.cached_tokens / self.prompt_tokens, 4)
                                 if self.prompt_tokens else None),
            "ttft_ms": self.ttft.quantiles(), "itl_ms": self.itl.quantiles(),
        }


@dataclass(slots=True)
class _Series:
    """One deployment's buckets, by index (floor(now / bucket_s))."""

    buckets: dict[int, Bucket] = field(default_factory=dict)
    last_index: int = 0


@dataclass(slots=True)
class TrafficBook:
    """The recent requests and the per-deployment buckets (see the module docstring)."""

    bucket_s: float = 10.0
    horizon_s: float = 1800.0
    recent_limit: int = 200
    max_deployments: int = 512
    recent: deque[Request] = field(init=False)
    series: dict[str, _Series] = field(default_factory=dict, init=False)

    def __post_init__(self) -> None:
        assert self.bucket_s > 0 and self.horizon_s >= self.bucket_s, "bad bucket settings"
        self.recent = deque(maxlen=self.recent_limit)

    @property
    def buckets_kept(self) -> int:
        return math.ceil(self.horizon_s / self.bucket_s) + 1

    def _index(self, now: float) -> int:
        return math.floor(now / self.bucket_s)

    def observe(self, r: Request, now: float) -> None:
        self.recent.append(r)
        index = self._index(now)
        s = self.series.get(r.deployment_id)
        if s is None:
            if len(self.series) >= self.max_deployments:
                oldest = min(self.series, key=lambda d: self.series[d].last_index)
                del self.series[oldest]
            s = self.series[r.deployment_id] = _Series()
        # A clock stepped back files into the latest bucket: never one older than horizon.
        index = max(index, s.last_index) if s.buckets else index
        bucket = s.buckets.get(index)
        if bucket is None:
            bucket = s.buckets[index] = Bucket()
            s.last_index = index
            self._prune(s, index)
        bucket.add(r)

    def _prune(self, s: _Series, index: int) -> None:
        floor = index - self.buckets_kept + 1
        for i in [i for i in s.buckets if i < floor]:
            del s.buckets[i]

    def deployments(self) -> list[str]:
        return sorted(self.series)

    def recent_view(self, limit: int, deployment: str = "") -> list[dict[str, Any]]:
        """The last `limit` requests, newest first (of `deployment` only, when given)."""
        out: list[dict[str, Any]] = []
        for r in reversed(self.recent):
            if len(out) >= limit:
                break
            if not deployment or r.deployment_id == deployment:
                out.append(r.view())
        return out

    def series_view(self, deployment: str, window_s: float, now: float) -> dict[str, Any]:
        """Per-bucket figures over the last `window_s` (at most the horizon), oldest first,
        empty buckets included so a chart's time axis is even; `summary` is the whole
        window merged. `deployment` empty: every deployment together."""
        window_s = min(max(window_s, self.bucket_s), self.horizon_s)
        last = self._index(now)
        first = last - math.ceil(window_s / self.bucket_s) + 1
        chosen = [self.series[d] for d in ([deployment] if deployment else self.series)
                  if d in self.series]
        points = []
        total = Bucket()
        for i in range(first, last + 1):
            merged = Bucket()
            for s in chosen:
                if (b := s.buckets.get(i)) is not None:
                    merged.merge(b)
            start = i * self.bucket_s
            # The current bucket has lasted only since its start: its rate is over that.
            seconds = min(self.bucket_s, max(1.0, now - start))
            points.append({"t": start, **merged.figures(seconds)})
            total.merge(merged)
        span = max(1.0, now - first * self.bucket_s)  # the window so far, not past now
        return {
            "deployment": deployment, "bucket_s": self.bucket_s,
            "window_s": span, "now": now, "points": points,
            "summary": total.figures(span), "deployments": self.deployments(),
        }


def observe_all(book: TrafficBook, records: Iterable[deploy_pb2.RequestRecord],
                now: float) -> None:
    """Feed several records observed at `now` (replay, tests)."""
    for rec in records:
        book.observe(request_of(rec), now)
