"""A fetch's progress: bytes done, rate and time left (no I/O; time comes in)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Progress:
    """Bytes of one fetch; the rate is a moving average over ~`window_s` seconds."""

    total: int
    started: float
    done: int = 0
    window_s: float = 2.0
    rate: float = 0.0
    _last_t: float = field(default=0.0, repr=False)
    _last_done: int = field(default=0, repr=False)

    def add(self, n: int, now: float) -> None:
        self.done += n
        if not self._last_t:
            self._last_t = self.started
        dt = now - self._last_t
        if dt >= 0.25:  # fold in at most 4 samples a second
            inst = (self.done - self._last_done) / dt
            alpha = min(1.0, dt / self.window_s)
            self.rate = inst if not self.rate else self.rate + alpha * (inst - self.rate)
            self._last_t, self._last_done = now, self.done

    def average(self, now: float) -> float:
        """Bytes per second since the start."""
        return self.done / (now - self.started) if now > self.started else 0.0

    def eta(self) -> float | None:
        """Seconds left at the current rate (None: not known yet)."""
        left = max(self.total - self.done, 0)
        if not left:
            return 0.0
        return left / self.rate if self.rate > 0 else None


def bandwidth(previous: float, measured: float, weight: float = 0.3) -> float:
    """The node's fetch bandwidth: a moving average of each fetch's average rate."""
    if measured <= 0:
        return previous
    return measured if previous <= 0 else previous + weight * (measured - previous)


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} TB"
