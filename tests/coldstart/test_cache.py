"""The cache's rules (no I/O): eviction by least recent use of whole revisions, never one in
use, counting shared blobs once; what is in use; which tier a start found; the warm set; the
start-time estimate placement weighs; progress and ETA."""

from __future__ import annotations

import pytest

from basalt.pb import deploy_pb2, weights_pb2
from basalt.weights import node_of_cluster, revision_key
from services.coldstart.core.cache import Held, NoRoom, in_use, plan_eviction, tier, warm_set
from services.coldstart.core.progress import Progress, bandwidth, human_bytes
from services.mcm.core.startcost import estimates, outcome

GB = 10**9


def test_evicts_least_recently_used_until_the_new_revision_fits() -> None:
    held = [Held("old", {"a": 4 * GB}, 10.0), Held("mid", {"b": 4 * GB}, 20.0),
            Held("new", {"c": 4 * GB}, 30.0)]
    plan = plan_eviction(held, [("d", 5 * GB)], budget=10 * GB, in_use=frozenset())
    assert plan.evict == ["old", "mid"] and plan.freed == 8 * GB


def test_never_evicts_a_revision_in_use_and_says_so_when_it_cannot_fit() -> None:
    held = [Held("old", {"a": 4 * GB}, 10.0), Held("mid", {"b": 4 * GB}, 20.0)]
    plan = plan_eviction(held, [("d", 4 * GB)], budget=8 * GB, in_use=frozenset({"old"}))
    assert plan.evict == ["mid"]
    with pytest.raises(NoRoom, match="old"):
        plan_eviction(held, [("d", 9 * GB)], budget=12 * GB, in_use=frozenset({"old", "mid"}))


def test_shared_blobs_are_counted_once_and_free_nothing_while_another_holds_them() -> None:
    # Two revisions share a 6 GB blob; evicting one frees only its own 1 GB.
    held = [Held("r1", {"shared": 6 * GB, "x": GB}, 1.0), Held("r2", {"shared": 6 * GB}, 2.0)]
    assert plan_eviction(held, [("shared", 6 * GB)], budget=7 * GB,
                         in_use=frozenset()).evict == [], "a stored blob costs nothing"
    plan = plan_eviction(held, [("y", GB)], budget=7 * GB, in_use=frozenset())
    assert plan.evict == ["r1"] and plan.freed == GB


def test_unknown_hashes_count_in_full_and_partial_downloads_take_room() -> None:
    held = [Held("r1", {"a": GB}, 1.0)]
    assert plan_eviction(held, [("", GB), ("", GB)], 3 * GB, frozenset()).evict == []
    assert plan_eviction(held, [("", GB)], 2.5 * GB, frozenset(), stray_bytes=GB).evict == ["r1"]


def test_in_use_is_live_replicas_and_unexpired_pins() -> None:
    assert in_use(["a"], {"b": 100.0, "c": 5.0}, now=10.0) == frozenset({"a", "b"})


def test_tier_of_a_start() -> None:
    assert tier(5, 1.0) == "source"
    assert tier(0, 0.95) == "warm"
    assert tier(0, 0.2) == "node"


def test_warm_set_keeps_in_use_then_recent_within_budget() -> None:
    held = [Held("a", {"a": 3 * GB}, 1.0), Held("b", {"b": 3 * GB}, 3.0),
            Held("c", {"c": 3 * GB}, 2.0)]
    assert warm_set(held, frozenset({"a"}), 7 * GB) == ["a", "b"]


def test_progress_rate_and_eta() -> None:
    p = Progress(total=1000, started=0.0)
    for t in range(1, 5):
        p.add(100, float(t))
    assert p.rate == pytest.approx(100.0)
    assert p.eta() == pytest.approx(6.0)
    assert p.average(4.0) == pytest.approx(100.0)
    assert bandwidth(0.0, 50.0) == 50.0 and 50.0 < bandwidth(50.0, 100.0) < 100.0
    assert human_bytes(1_500_000) == "1.5 MB"


def _node(name: str, *revs: weights_pb2.WeightsRevision, fetch_bps: float = 100e6,
          queued: int = 0, ts: float = 100.0) -> weights_pb2.NodeWeights:
    return weights_pb2.NodeWeights(node=name, revisions=revs, fetch_bytes_per_s=fetch_bps,
                                   read_bytes_per_s=1e9, queued_bytes=queued, heartbeat_ts=ts)


def test_start_estimate_prefers_the_node_holding_the_weights() -> None:
    src = deploy_pb2.WeightsSource(uri="hf://org/model", revision="abc")
    key = revision_key(src)
    have = weights_pb2.WeightsRevision(key=key, state=weights_pb2.WEIGHTS_STATE_PRESENT,
                                       total_bytes=10 * GB, present_bytes=10 * GB)
    half = weights_pb2.WeightsRevision(key=key, state=weights_pb2.WEIGHTS_STATE_FETCHING,
                                       total_bytes=10 * GB, present_bytes=5 * GB)
    nodes = {"a": _node("a", have), "b": _node("b"), "c": _node("c", half),
             "d": _node("d", queued=20 * GB)}
    est = estimates(key, ["a", "b", "c", "d", "e"], nodes, now=101.0, stale_s=20.0)
    assert est["a"] == pytest.approx(10.0)  # load only: 10 GB at 1 GB/s
    assert est["b"] == pytest.approx(110.0)  # 100 s to fetch at 100 MB/s, then load
    assert est["c"] == pytest.approx(60.0)  # half there, and its own fetch is not a queue
    assert est["d"] == pytest.approx(310.0)  # 20 GB queued ahead of it
    assert est["e"] > est["a"], "a cluster with no cache service is estimated fetching all"
    stale = estimates(key, ["a"], nodes, now=500.0, stale_s=20.0)
    assert stale["a"] > est["a"], "a stale node record is not trusted"


def test_outcome_is_found_by_command_id() -> None:
    rev = weights_pb2.WeightsRevision(done=[
        weights_pb2.WeightsDone(command_id="x", tier="source", fetched_bytes=5),
        weights_pb2.WeightsDone(command_id="y", tier="warm")])
    assert outcome(rev, "y").tier == "warm"  # type: ignore[union-attr]
    assert outcome(rev, "z") is None and outcome(None, "x") is None


def test_node_names_of_clusters_are_subject_tokens() -> None:
    assert node_of_cluster("aws/us-east-1/us-east-1a/h100") == "aws-us-east-1-us-east-1a-h100"
    assert node_of_cluster("local") == "local"
