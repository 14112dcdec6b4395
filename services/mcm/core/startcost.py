"""How long a replica would take to start on each cluster, from what each node's weight cache
holds (no I/O; `now` comes in). The ServerlessLLM scheduler's estimate:

    start_s = queue (bytes the node fetches ahead of us / its fetch bandwidth)
            + bytes of this revision it lacks / its fetch bandwidth
            + the revision's bytes / its read bandwidth (loading)

A node never measured gets the defaults; a cluster with no fresh node record is estimated as
fetching everything. Placement weighs the estimate in dollars per hour next to price and
latency (`Weights.start_cost_per_s`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from basalt.pb import weights_pb2
from basalt.weights import node_of_cluster

DEFAULT_FETCH_BPS = 100e6
DEFAULT_READ_BPS = 1e9


@dataclass(slots=True, frozen=True)
class Prefetched:
    """What a prefetch found: where the revision's files are and which tier they came from."""

    path: str
    key: str
    fetched_bytes: int
    tier: str
    fetched_ts: float


def revision_bytes(key: str, nodes: Iterable[weights_pb2.NodeWeights]) -> int:
    """The revision's size as any node knows it (0: none does yet)."""
    sizes = [r.total_bytes for n in nodes for r in n.revisions if r.key == key and r.total_bytes]
    return max(sizes, default=0)


def start_seconds(key: str, total: int, node: weights_pb2.NodeWeights | None, now: float,
                  stale_s: float) -> float:
    fresh = node is not None and now - node.heartbeat_ts <= stale_s
    fetch_bps = (node.fetch_bytes_per_s if fresh and node and node.fetch_bytes_per_s
                 else DEFAULT_FETCH_BPS)
    read_bps = node.read_bytes_per_s if fresh and node and node.read_bytes_per_s else DEFAULT_READ_BPS
    if not fresh or node is None:
        return total / fetch_bps + total / read_bps
    rev = next((r for r in node.revisions if r.key == key), None)
    have = rev.present_bytes if rev is not None and rev.state in (
        weights_pb2.WEIGHTS_STATE_PRESENT, weights_pb2.WEIGHTS_STATE_FETCHING) else 0
    mine_queued = total - have if rev is not None and rev.state == weights_pb2.WEIGHTS_STATE_FETCHING else 0
    queue = max(int(node.queued_bytes) - mine_queued, 0)
    return queue / fetch_bps + max(total - have, 0) / fetch_bps + total / read_bps


def estimates(key: str, clusters: Iterable[str], nodes: Mapping[str, weights_pb2.NodeWeights],
              now: float, stale_s: float) -> dict[str, float]:
    """Estimated start seconds of revision `key` on each cluster (`nodes` by node name)."""
    total = revision_bytes(key, nodes.values())
    return {c: start_seconds(key, total, nodes.get(node_of_cluster(c)), now, stale_s)
            for c in clusters}


def outcome(rev: weights_pb2.WeightsRevision | None, command_id: str
            ) -> weights_pb2.WeightsDone | None:
    """The service's outcome of one fetch command, once it is recorded."""
    if rev is None:
        return None
    return next((d for d in reversed(rev.done) if d.command_id == command_id), None)
