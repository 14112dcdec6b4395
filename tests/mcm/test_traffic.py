"""The dashboard's traffic core (services/mcm/core/traffic.py): ring, buckets, percentiles,
ITL, prefix-hit and error ratios, and bounded memory (pure: no network, milliseconds)."""

from __future__ import annotations

import pytest

from basalt.pb import deploy_pb2
from services.mcm.core.traffic import (
    GROWTH,
    LatencyHistogram,
    TrafficBook,
    itl_of,
    observe_all,
    request_of,
)

T0 = 1_000_000.0  # a bucket boundary for bucket_s 10


def rec(dep: str = "d1", i: int = 0, ttft: float = 100.0, e2e: float = 500.0,
        completion: int = 5, prompt: int = 100, cached: int = 0,
        outcome: str = "ok") -> deploy_pb2.RequestRecord:
    return deploy_pb2.RequestRecord(
        request_id=f"r{i}", deployment_id=dep, replica_id="rep-1", ttft_ms=ttft, e2e_ms=e2e,
        prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached,
        outcome=outcome, ts=T0, model="m")


def test_itl_is_the_mean_gap_after_the_first_token_and_none_without_two_tokens() -> None:
    assert itl_of(500.0, 100.0, 5) == 100.0
    assert itl_of(500.0, 100.0, 1) is None
    assert itl_of(500.0, 0.0, 5) is None  # no first token
    assert itl_of(50.0, 100.0, 5) is None  # ended before its first token: a broken record
    assert request_of(rec()).itl_ms == 100.0


def test_histogram_quantiles_are_within_the_bin_width() -> None:
    h = LatencyHistogram()
    for v in range(1, 1001):  # 1..1000 ms
        h.add(float(v))
    for q, true in ((0.5, 500.0), (0.9, 900.0), (0.99, 990.0)):
        got = h.quantile(q)
        assert got is not None and abs(got - true) / true <= GROWTH - 1, (q, got)
    assert LatencyHistogram().quantile(0.5) is None
    h2 = LatencyHistogram()
    h2.add(0.0)
    h2.add(1e12)  # out of range both ways: clamped, never an error
    assert h2.total == 2


def test_a_bucket_gives_rate_percentiles_prefix_hits_and_errors_by_outcome() -> None:
    book = TrafficBook(bucket_s=10, horizon_s=60)
    records = [rec(i=i, ttft=10.0 * (i + 1), e2e=10.0 * (i + 1) + 40, prompt=100, cached=25)
               for i in range(8)]
    records += [rec(i=8, outcome="rejected", ttft=0, e2e=1, completion=0, prompt=0),
                rec(i=9, outcome="timeout", ttft=0, e2e=1, completion=0, prompt=0)]
    observe_all(book, records, T0 + 1)
    view = book.series_view("d1", 60, T0 + 10)  # the bucket [T0, T0+10) is complete
    point = next(p for p in view["points"] if p["t"] == T0)
    assert point["requests"] == 10 and point["rate_per_s"] == 1.0
    assert point["outcomes"] == {"ok": 8, "rejected": 1, "timeout": 1}
    assert point["error_rate"] == 0.2
    assert point["error_rate_by_outcome"] == {"rejected": 0.1, "timeout": 0.1}
    assert point["prefix_hit_ratio"] == 0.25
    p50 = point["ttft_ms"]["p50"]
    assert p50 is not None and abs(p50 - 40.0) / 40.0 <= 0.1  # TTFTs 10..80: 4th of 8
    assert point["itl_ms"]["p50"] == pytest.approx(10.0, rel=0.1)  # 40 ms over 4 gaps
    assert view["summary"]["requests"] == 10


def test_series_is_even_oldest_first_and_all_deployments_merge() -> None:
    book = TrafficBook(bucket_s=10, horizon_s=300)
    book.observe(request_of(rec("a", 1)), T0 + 1)
    book.observe(request_of(rec("b", 2)), T0 + 21)
    view = book.series_view("", 60, T0 + 25)
    ts = [p["t"] for p in view["points"]]
    assert ts == sorted(ts) and len(ts) == 6 and ts[-1] == T0 + 20
    assert [p["requests"] for p in view["points"]][-3:] == [1, 0, 1]
    assert view["summary"]["requests"] == 2 and view["deployments"] == ["a", "b"]
    assert book.series_view("a", 60, T0 + 25)["summary"]["requests"] == 1
    assert book.series_view("nope", 60, T0 + 25)["summary"]["requests"] == 0
    # The current bucket's rate is over the seconds it has lasted, not the whole bucket.
    assert view["points"][-1]["rate_per_s"] == pytest.approx(1 / 5)


def test_memory_is_bounded_in_requests_buckets_and_deployments() -> None:
    book = TrafficBook(bucket_s=10, horizon_s=60, recent_limit=5, max_deployments=3)
    for i in range(200):
        book.observe(request_of(rec(f"d{i % 4}", i)), T0 + i * 10)
    assert len(book.recent) == 5
    assert len(book.series) == 3
    assert all(len(s.buckets) <= book.buckets_kept for s in book.series.values())
    newest = book.recent_view(10)
    assert [r["request_id"] for r in newest] == ["r199", "r198", "r197", "r196", "r195"]
    assert [r["request_id"] for r in book.recent_view(10, "d3")] == ["r199", "r195"]


def test_a_clock_stepping_back_files_into_the_latest_bucket() -> None:
    book = TrafficBook(bucket_s=10, horizon_s=60)
    book.observe(request_of(rec(i=1)), T0 + 30)
    book.observe(request_of(rec(i=2)), T0 + 1)  # 30 s back
    s = book.series["d1"]
    assert list(s.buckets) == [int((T0 + 30) // 10)] and s.buckets[s.last_index].requests == 2


def test_window_is_clamped_to_the_horizon() -> None:
    book = TrafficBook(bucket_s=10, horizon_s=60)
    assert len(book.series_view("", 1e9, T0)["points"]) == 6
    assert len(book.series_view("", 0.001, T0)["points"]) == 1
