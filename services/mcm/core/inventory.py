"""What the control plane knows of where replicas can run: clusters, their use, latency and
traffic between regions (no I/O).

A cluster is one pool of one accelerator type in one zone of one region of one cloud. Its
capacity is counted in units: accelerators for a GPU pool, replica slots for a CPU pool
(accelerator ""). Every replica takes at least one unit (see `units_for`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import NewType

ClusterName = NewType("ClusterName", str)
DeploymentId = NewType("DeploymentId", str)

# Where a deployment's requests come from: region -> weight (any positive scale).
TrafficMix = Mapping[str, float]


class Scope(Enum):
    """How much of the world a failure covers, widest first."""

    CLOUD = "cloud"
    REGION = "region"
    ZONE = "zone"
    CLUSTER = "cluster"


def units_for(accelerator_count: int) -> int:
    """Capacity units one replica takes: its accelerators, and at least one slot."""
    return max(accelerator_count, 1)


@dataclass(slots=True, frozen=True)
class Cluster:
    """One pool of capacity; `up` is False while its provider reports it unreachable."""

    name: ClusterName
    cloud: str
    region: str
    zone: str
    # e.g. "H100"; "" for a CPU pool.
    accelerator: str
    # Accelerators in the pool (replica slots for a CPU pool).
    gpus_total: int
    # Dollars per accelerator-hour (per slot-hour for a CPU pool).
    price_per_gpu_hour: float
    up: bool = True

    def key(self, scope: Scope) -> str:
        """This cluster's name at a failure scope: the cloud, cloud/region, ... or the name."""
        if scope is Scope.CLOUD:
            return self.cloud
        if scope is Scope.REGION:
            return f"{self.cloud}/{self.region}"
        if scope is Scope.ZONE:
            return f"{self.cloud}/{self.region}/{self.zone}"
        return self.name


@dataclass(slots=True)
class ClusterUsage:
    """Units our own replicas (running, starting or being launched) hold in each cluster."""

    used: dict[ClusterName, int] = field(default_factory=dict)

    def of(self, cluster: ClusterName) -> int:
        return self.used.get(cluster, 0)

    def free(self, cluster: Cluster) -> int:
        return cluster.gpus_total - self.of(cluster.name)

    def add(self, cluster: ClusterName, units: int) -> None:
        self.used[cluster] = self.of(cluster) + units

    def copy(self) -> ClusterUsage:
        return ClusterUsage(dict(self.used))


@dataclass(slots=True, frozen=True)
class LatencyTable:
    """Round-trip milliseconds between regions; symmetric; pairs not listed cost `unknown_ms`."""

    ms: Mapping[tuple[str, str], float] = field(default_factory=dict)
    same_region_ms: float = 0.0
    unknown_ms: float = 100.0

    def between(self, a: str, b: str) -> float:
        if a == b:
            return self.same_region_ms
        found = self.ms.get((a, b))
        if found is None:
            found = self.ms.get((b, a))
        return self.unknown_ms if found is None else found

    def weighted_ms(self, region: str, traffic: TrafficMix) -> float:
        """Mean latency from the traffic's regions to `region`, weighted; 0 with no traffic."""
        total = sum(w for w in traffic.values() if w > 0)
        if total <= 0:
            return 0.0
        return sum(self.between(src, region) * w for src, w in traffic.items() if w > 0) / total

    @staticmethod
    def from_nested(table: Mapping[str, Mapping[str, float]], **kw: float) -> LatencyTable:
        """Build from {region: {other_region: ms}} as written in a config file."""
        pairs = {(a, b): float(ms) for a, row in table.items() for b, ms in row.items()}
        return LatencyTable(pairs, **kw)


def clusters_by_name(clusters: Iterable[Cluster]) -> dict[ClusterName, Cluster]:
    return {c.name: c for c in clusters}
