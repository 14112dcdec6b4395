"""Where one new replica should run: filter clusters by hard rules, rank the rest by cost
(no I/O; `now` comes in).

Hard rules, in the order they are checked (the first one a cluster breaks is reported):
accelerator type, allowed regions, cluster up, not blocked, free capacity. Every cost is in
dollars per hour so the terms add up:

    score = price of the replica's units
          + latency_cost_per_ms * (traffic-weighted latency to the cluster's region)
          + spread_penalty * (this deployment's replicas already in that region)   [spread on]
          - preferred_bonus                                       [region is preferred]
          + start_cost_per_s * (estimated start seconds on that cluster: core/startcost.py)

Lowest score wins; equal scores go to the cluster whose name sorts first.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import Enum

from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import PlacementError
from services.mcm.core.inventory import Cluster, ClusterUsage, LatencyTable, TrafficMix, units_for


@dataclass(slots=True, frozen=True)
class Requirement:
    """What one replica of a deployment needs and prefers."""

    # e.g. "H100"; "" for a CPU replica.
    accelerator: str = ""
    count: int = 0
    # Hard: only these regions (empty = any region).
    allowed_regions: frozenset[str] = frozenset()
    # Soft: these regions get `preferred_bonus`.
    preferred_regions: frozenset[str] = frozenset()
    # Prefer regions holding fewer of this deployment's replicas.
    spread: bool = True

    @property
    def units(self) -> int:
        return units_for(self.count)

    def describe(self) -> str:
        kind = f"{self.count}x {self.accelerator}" if self.accelerator else "a CPU slot"
        where = f" in {sorted(self.allowed_regions)}" if self.allowed_regions else ""
        return kind + where


@dataclass(slots=True, frozen=True)
class Weights:
    """How much latency, concentration and preference are worth, in dollars per hour."""

    latency_cost_per_ms: float = 0.01
    spread_penalty: float = 0.5
    preferred_bonus: float = 1.0
    # A second of cold start (fetching weights the node lacks, loading them) is worth this
    # much: with equal prices the node holding the weights wins; a 60 s fetch weighs as much
    # as $0.60/h, less than a cheaper GPU's usual saving.
    start_cost_per_s: float = 0.01


DEFAULT_WEIGHTS = Weights()
NO_LATENCY = LatencyTable()


class Rule(Enum):
    """The hard rule that excluded a cluster."""

    WRONG_ACCELERATOR = "wrong accelerator"
    REGION_NOT_ALLOWED = "region not allowed"
    CLUSTER_DOWN = "cluster down"
    BLOCKED = "blocked"
    NO_CAPACITY = "no capacity"


@dataclass(slots=True, frozen=True)
class Rejection:
    cluster: str
    rule: Rule
    detail: str = ""


@dataclass(slots=True, frozen=True)
class Choice:
    """A cluster that fits, with its score and the terms it is made of."""

    cluster: Cluster
    score: float
    price: float
    latency_cost: float
    spread_penalty: float
    preference_bonus: float
    start_s: float = 0.0
    start_cost: float = 0.0


@dataclass(slots=True)
class Placement:
    """Every cluster judged: the ones that fit, best first, and why the others did not."""

    requirement: Requirement
    choices: list[Choice] = field(default_factory=list)
    rejections: list[Rejection] = field(default_factory=list)

    @property
    def best(self) -> Choice | None:
        return self.choices[0] if self.choices else None

    def error(self) -> PlacementError:
        return PlacementError(self.requirement, self.rejections)


def _rejection(req: Requirement, c: Cluster, usage: ClusterUsage, blocklist: Blocklist,
               now: float) -> Rejection | None:
    if c.accelerator != req.accelerator:
        return Rejection(c.name, Rule.WRONG_ACCELERATOR, c.accelerator or "CPU")
    if req.allowed_regions and c.region not in req.allowed_regions:
        return Rejection(c.name, Rule.REGION_NOT_ALLOWED, c.region)
    if not c.up:
        return Rejection(c.name, Rule.CLUSTER_DOWN)
    block = blocklist.blocking(c, now)
    if block is not None:
        why = f": {block.reason}" if block.reason else ""
        return Rejection(c.name, Rule.BLOCKED,
                         f"{block.scope.value} {block.key} until {block.until:.0f}{why}")
    free = usage.free(c)
    if free < req.units:
        used = c.gpus_total - max(free, 0)
        return Rejection(c.name, Rule.NO_CAPACITY, f"capacity {used}/{c.gpus_total} used, "
                         f"needs {req.units}")
    return None


def _choice(req: Requirement, c: Cluster, existing_by_region: Mapping[str, int],
            traffic: TrafficMix, latency: LatencyTable, w: Weights,
            start_s: Mapping[str, float]) -> Choice:
    price = c.price_per_gpu_hour * req.units
    latency_cost = w.latency_cost_per_ms * latency.weighted_ms(c.region, traffic)
    spread = w.spread_penalty * existing_by_region.get(c.region, 0) if req.spread else 0.0
    bonus = w.preferred_bonus if c.region in req.preferred_regions else 0.0
    start = start_s.get(c.name, 0.0)
    start_cost = w.start_cost_per_s * start
    return Choice(c, price + latency_cost + spread - bonus + start_cost, price, latency_cost,
                  spread, bonus, start, start_cost)


def evaluate(
    requirement: Requirement,
    clusters: Iterable[Cluster],
    usage: ClusterUsage,
    existing_replicas_by_region: Mapping[str, int],
    blocklist: Blocklist,
    traffic: TrafficMix,
    now: float,
    latency: LatencyTable = NO_LATENCY,
    weights: Weights = DEFAULT_WEIGHTS,
    start_s: Mapping[str, float] | None = None,
) -> Placement:
    """Judge every cluster for one new replica of a deployment; `start_s` holds its
    estimated start seconds per cluster name (absent: 0)."""
    out = Placement(requirement)
    for c in sorted(clusters, key=lambda c: c.name):
        rejected = _rejection(requirement, c, usage, blocklist, now)
        if rejected is not None:
            out.rejections.append(rejected)
        else:
            out.choices.append(_choice(requirement, c, existing_replicas_by_region, traffic,
                                       latency, weights, start_s or {}))
    out.choices.sort(key=lambda ch: (ch.score, ch.cluster.name))
    return out


def place(
    requirement: Requirement,
    clusters: Iterable[Cluster],
    usage: ClusterUsage,
    existing_replicas_by_region: Mapping[str, int],
    blocklist: Blocklist,
    traffic: TrafficMix,
    now: float,
    latency: LatencyTable = NO_LATENCY,
    weights: Weights = DEFAULT_WEIGHTS,
) -> list[Choice]:
    """Clusters that fit one new replica, best first (empty when none does)."""
    return evaluate(requirement, clusters, usage, existing_replicas_by_region, blocklist,
                    traffic, now, latency, weights).choices


def place_one(
    requirement: Requirement,
    clusters: Iterable[Cluster],
    usage: ClusterUsage,
    existing_replicas_by_region: Mapping[str, int],
    blocklist: Blocklist,
    traffic: TrafficMix,
    now: float,
    latency: LatencyTable = NO_LATENCY,
    weights: Weights = DEFAULT_WEIGHTS,
) -> Choice:
    """The best cluster for one new replica; raises PlacementError saying why none fits."""
    result = evaluate(requirement, clusters, usage, existing_replicas_by_region, blocklist,
                      traffic, now, latency, weights)
    if result.best is None:
        raise result.error()
    return result.best
