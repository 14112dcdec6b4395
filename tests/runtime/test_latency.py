"""Latency windows forget old samples and report sane percentiles."""

from services.runtime.core.latency import LatencyWindow, percentiles


def test_percentiles_of_known_values() -> None:
    p = percentiles([float(v) for v in range(1, 101)])
    assert (p.p50_ms, p.p90_ms, p.p99_ms, p.count) == (51.0, 91.0, 100.0, 100)


def test_window_drops_samples_older_than_its_span() -> None:
    w = LatencyWindow(window_s=10.0)
    w.add(0.0, 500.0)
    w.add(9.0, 10.0)
    assert w.summary(now=9.5).count == 2
    assert w.summary(now=12.0).p99_ms == 10.0
