"""The simcloud SIMULATOR's world: simulated clouds, regions and zones with GPU inventory and
prices, parsed from a config dict, plus the faults injected into them (no I/O).

Config (YAML in deploy/simcloud/*.yaml), every name unique across clouds, regions and zones:

    launch_delay_s: 0.2                    # default for every region
    clouds:
      aws:
        prices: {H100: 4.0, CPU: 0.1}      # $/GPU-hour; CPU = $/replica-slot-hour
        regions:
          us-east-1:
            price_factor: 1.0              # multiplies the cloud's prices
            launch_delay_s: 0.5            # optional override
            zones:
              us-east-1a: {H100: 16, CPU: 8}
    latency_ms:                            # optional, symmetric
      us-east-1: {europe-west4: 85}

A simulated cluster is one pool: name "<cloud>/<region>/<zone>/<accelerator>" ("cpu" for CPU).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from basalt.ids import ReplicaId
from services.mcm.core.errors import (
    ProviderError,
    SimCloudConfigError,
    UnknownCluster,
    UnknownSimTarget,
)
from services.mcm.core.inventory import Cluster, ClusterName, LatencyTable, Scope

CPU = "CPU"


@dataclass(slots=True, frozen=True)
class SimPool:
    cluster: Cluster
    launch_delay_s: float


@dataclass(slots=True, frozen=True)
class SimCloudConfig:
    """Every simulated pool, and the simulated latency between regions."""

    pools: tuple[SimPool, ...]
    latency: LatencyTable = field(default_factory=LatencyTable)

    def names(self, scope: Scope) -> set[str]:
        attr = {Scope.CLOUD: "cloud", Scope.REGION: "region", Scope.ZONE: "zone",
                Scope.CLUSTER: "name"}[scope]
        return {getattr(p.cluster, attr) for p in self.pools}


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping) or not value:
        raise SimCloudConfigError(where, "expected a non-empty mapping")
    return value


def _number(value: Any, where: str, minimum: float, integer: bool = False) -> float:
    kind = int if integer else (int, float)
    if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
        raise SimCloudConfigError(where, f"expected {'an integer' if integer else 'a number'} "
                                  f">= {minimum}, got {value!r}")
    return value


def _only(value: Mapping[str, Any], allowed: set[str], where: str) -> None:
    extra = set(value) - allowed
    if extra:
        raise SimCloudConfigError(where, f"unknown keys {sorted(extra)} (allowed: {sorted(allowed)})")


def _zone_pools(cloud: str, region: str, zone: str, pools: Mapping[str, Any],
                prices: Mapping[str, Any], factor: float, delay: float, where: str) -> list[SimPool]:
    out = []
    for accel, count in pools.items():
        if accel not in prices:
            raise SimCloudConfigError(f"{where}.{accel}", f"cloud {cloud} has no price for it")
        units = int(_number(count, f"{where}.{accel}", 0, integer=True))
        price = _number(prices[accel], f"clouds.{cloud}.prices.{accel}", 0) * factor
        accelerator = "" if accel == CPU else accel
        name = ClusterName(f"{cloud}/{region}/{zone}/{accel.lower()}")
        out.append(SimPool(Cluster(name, cloud, region, zone, accelerator, units, price), delay))
    return out


def _region_pools(cloud: str, region: str, spec: Any, prices: Mapping[str, Any],
                  default_delay: float, where: str) -> list[SimPool]:
    spec = _mapping(spec, where)
    _only(spec, {"price_factor", "launch_delay_s", "zones"}, where)
    factor = _number(spec.get("price_factor", 1.0), f"{where}.price_factor", 0)
    delay = _number(spec.get("launch_delay_s", default_delay), f"{where}.launch_delay_s", 0)
    out = []
    for zone, pools in _mapping(spec.get("zones"), f"{where}.zones").items():
        zwhere = f"{where}.zones.{zone}"
        out += _zone_pools(cloud, region, zone, _mapping(pools, zwhere), prices, factor, delay,
                           zwhere)
    return out


def _check_unique(pools: list[SimPool]) -> None:
    seen: dict[str, str] = {}
    for p in pools:
        c = p.cluster
        for kind, name, parent in (("cloud", c.cloud, ""), ("region", c.region, c.cloud),
                                   ("zone", c.zone, f"{c.cloud}/{c.region}")):
            owner = f"{kind} in {parent}" if parent else kind
            if seen.setdefault(name, owner) != owner:
                raise SimCloudConfigError(name, f"name used twice ({seen[name]}, {owner}); "
                                          "cloud, region and zone names must be unique")


def parse_config(data: Mapping[str, Any]) -> SimCloudConfig:
    """The simulated world a config dict describes; SimCloudConfigError names what is wrong."""
    data = _mapping(data, "")
    _only(data, {"launch_delay_s", "clouds", "latency_ms"}, "")
    delay = _number(data.get("launch_delay_s", 0.0), "launch_delay_s", 0)
    pools: list[SimPool] = []
    for cloud, spec in _mapping(data.get("clouds"), "clouds").items():
        where = f"clouds.{cloud}"
        spec = _mapping(spec, where)
        _only(spec, {"prices", "regions"}, where)
        prices = _mapping(spec.get("prices"), f"{where}.prices")
        for region, rspec in _mapping(spec.get("regions"), f"{where}.regions").items():
            pools += _region_pools(cloud, region, rspec, prices, delay,
                                   f"{where}.regions.{region}")
    _check_unique(pools)
    latency = data.get("latency_ms") or {}
    for a, row in _mapping(latency, "latency_ms").items() if latency else ():
        for b, ms in _mapping(row, f"latency_ms.{a}").items():
            _number(ms, f"latency_ms.{a}.{b}", 0)
    return SimCloudConfig(tuple(pools), LatencyTable.from_nested(latency))


@dataclass(slots=True)
class _Alloc:
    cluster: ClusterName
    units: int


class SimWorld:
    """Simulated clouds' state: what is down, which zones fail launches, what is allocated."""

    def __init__(self, config: SimCloudConfig) -> None:
        self.config = config
        self._pools = {p.cluster.name: p for p in config.pools}
        self._down: dict[Scope, set[str]] = {s: set() for s in (Scope.CLOUD, Scope.REGION,
                                                                Scope.ZONE)}
        # zone -> launches left to fail (None = every launch until restored).
        self._capacity_errors: dict[str, int | None] = {}
        self._allocs: dict[ReplicaId, _Alloc] = {}

    def _outage(self, c: Cluster) -> Scope | None:
        """The widest level above `c` that is down, or None."""
        for scope, name in ((Scope.CLOUD, c.cloud), (Scope.REGION, c.region), (Scope.ZONE, c.zone)):
            if name in self._down[scope]:
                return scope
        return None

    def clusters(self) -> list[Cluster]:
        """Every simulated pool with its current up/down state."""
        out = []
        for p in self.config.pools:
            c = p.cluster
            out.append(c if self._outage(c) is None else Cluster(
                c.name, c.cloud, c.region, c.zone, c.accelerator, c.gpus_total,
                c.price_per_gpu_hour, up=False))
        return out

    def launch_delay_s(self, cluster: str) -> float:
        pool = self._pools.get(ClusterName(cluster))
        return pool.launch_delay_s if pool else 0.0

    def used(self, cluster: str) -> int:
        return sum(a.units for a in self._allocs.values() if a.cluster == cluster)

    def _target(self, scope: Scope, name: str) -> None:
        if name not in self.config.names(scope):
            raise UnknownSimTarget(scope.value, name, self.config.names(scope))

    def inject_capacity_error(self, zone: str, count: int | None = None) -> None:
        """Fail the next `count` launches in `zone` with a ZONE capacity error (None: all)."""
        self._target(Scope.ZONE, zone)
        self._capacity_errors[zone] = count

    def fail(self, scope: Scope, name: str) -> list[ReplicaId]:
        """An outage of a cloud, region or zone; returns the replicas on it (to be killed)."""
        self._target(scope, name)
        self._down[scope].add(name)
        down = {c.name for c in self.clusters() if not c.up}
        return sorted(rid for rid, a in self._allocs.items() if a.cluster in down)

    def restore(self, name: str | None = None) -> None:
        """End outages and capacity errors of a cloud, region or zone by name (None: all)."""
        if name is None:
            self._capacity_errors.clear()
            for names in self._down.values():
                names.clear()
            return
        if not any(name in self.config.names(s) for s in self._down):
            raise UnknownSimTarget("cloud, region or zone", name,
                                   set().union(*(self.config.names(s) for s in self._down)))
        for names in self._down.values():
            names.discard(name)
        for pool in self.config.pools:
            if name in (pool.cluster.cloud, pool.cluster.region, pool.cluster.zone):
                self._capacity_errors.pop(pool.cluster.zone, None)

    def check_up(self, cluster: str) -> Cluster:
        """The pool, if no outage covers it now; else ProviderError with the outage's scope."""
        pool = self._pools.get(ClusterName(cluster))
        if pool is None:
            raise UnknownCluster(cluster, list(self._pools))
        c = pool.cluster
        outage = self._outage(c)
        if outage is not None:
            raise ProviderError(outage, f"simulated {outage.value} outage: "
                                f"{c.key(outage)} is unreachable", cluster)
        return c

    def _take_capacity_error(self, c: Cluster) -> None:
        if c.zone not in self._capacity_errors:
            return
        left = self._capacity_errors[c.zone]
        if left is not None:
            if left <= 1:
                del self._capacity_errors[c.zone]
            else:
                self._capacity_errors[c.zone] = left - 1
        raise ProviderError(Scope.ZONE, f"simulated capacity error in {c.zone}", c.name)

    def admit(self, replica_id: ReplicaId, cluster: str, units: int) -> Cluster:
        """Allocate `units` of `cluster` to a replica, or raise ProviderError as a cloud would:
        outage (its scope), injected capacity error or full pool (ZONE). Admitting a replica
        already allocated there allocates nothing new."""
        alloc = self._allocs.get(replica_id)
        if alloc is not None and alloc.cluster == cluster:
            return self.check_up(cluster)
        c = self.check_up(cluster)
        self._take_capacity_error(c)
        free = c.gpus_total - self.used(c.name)
        if units > free:
            raise ProviderError(Scope.ZONE, f"simulated capacity: {free} of {c.gpus_total} "
                                f"{c.accelerator or CPU} free, {units} asked", c.name)
        self._allocs[replica_id] = _Alloc(c.name, units)
        return c

    def track(self, replica_id: ReplicaId, cluster: str, units: int) -> None:
        """Record a replica found running (after a restart) without checking anything."""
        if ClusterName(cluster) in self._pools:
            self._allocs[replica_id] = _Alloc(ClusterName(cluster), units)

    def release(self, replica_id: ReplicaId) -> None:
        self._allocs.pop(replica_id, None)
