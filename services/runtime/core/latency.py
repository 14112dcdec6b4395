"""Rolling TTFT / inter-token latency windows and their percentiles (no I/O)."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class Percentiles:
    p50_ms: float
    p90_ms: float
    p99_ms: float
    count: int


def percentiles(values_ms: list[float]) -> Percentiles:
    if not values_ms:
        return Percentiles(0.0, 0.0, 0.0, 0)
    ordered = sorted(values_ms)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

    return Percentiles(at(0.50), at(0.90), at(0.99), len(ordered))


class LatencyWindow:
    """Keeps samples from the last `window_s` seconds; `now` comes from the caller."""

    def __init__(self, window_s: float = 30.0, max_samples: int = 10_000) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, float]] = deque(maxlen=max_samples)

    def add(self, now: float, value_ms: float) -> None:
        self._samples.append((now, value_ms))

    def summary(self, now: float) -> Percentiles:
        cutoff = now - self.window_s
        while self._samples and self._samples[0][0] < cutoff:
            self._samples.popleft()
        return percentiles([v for _, v in self._samples])
