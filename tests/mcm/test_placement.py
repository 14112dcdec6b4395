"""Placement: hard rules exclude, price + latency + spread - preference ranks the rest."""

from __future__ import annotations

import pytest

from services.mcm.core.blocklist import Blocklist, Scope
from services.mcm.core.errors import PlacementError
from services.mcm.core.inventory import ClusterUsage, LatencyTable
from services.mcm.core.placement import Requirement, Rule, Weights, evaluate, place, place_one
from tests.mcm.clusters import AWS_E1A, AWS_E1B, AWS_W2A, GCP_C1A, GCP_EU4A, WORLD, cluster

H100x1 = Requirement("H100", 1)


def names(choices) -> list[str]:
    return [c.cluster.name for c in choices]


def best(req: Requirement = H100x1, clusters=WORLD, usage: ClusterUsage | None = None,
         by_region: dict[str, int] | None = None, blocklist: Blocklist | None = None,
         traffic: dict[str, float] | None = None, now: float = 0.0, **kw) -> str:
    return place_one(req, clusters, usage or ClusterUsage(), by_region or {},
                     blocklist or Blocklist(), traffic or {}, now, **kw).cluster.name


def test_cheapest_region_first_and_full_ranking() -> None:
    ranked = place(H100x1, WORLD, ClusterUsage(), {}, Blocklist(), {}, 0.0)
    assert names(ranked) == [AWS_E1A.name, AWS_E1B.name, GCP_EU4A.name, GCP_C1A.name,
                             AWS_W2A.name]
    assert ranked[0].price == pytest.approx(3.0)


def test_price_scales_with_accelerator_count() -> None:
    ranked = place(Requirement("H100", 4), [AWS_E1A], ClusterUsage(), {}, Blocklist(), {}, 0.0)
    assert ranked[0].price == pytest.approx(12.0)


def test_allowed_regions_are_a_hard_rule() -> None:
    req = Requirement("H100", 1, allowed_regions=frozenset({"us-west-2"}))
    assert best(req) == AWS_W2A.name
    only_eu = Requirement("H100", 1, allowed_regions=frozenset({"europe-west4"}))
    full = ClusterUsage({GCP_EU4A.name: 8})
    with pytest.raises(PlacementError) as e:
        best(only_eu, usage=full)
    rules = {r.cluster: r.rule for r in e.value.rejections}
    assert rules[GCP_EU4A.name] is Rule.NO_CAPACITY
    assert rules[AWS_E1A.name] is Rule.REGION_NOT_ALLOWED


def test_preferred_region_wins_at_equal_price() -> None:
    east = cluster("aws", "us-east-1", "us-east-1a", 3.0)
    west = cluster("aws", "us-west-2", "us-west-2a", 3.0)
    assert best(clusters=[east, west]) == east.name  # name decides the tie
    req = Requirement("H100", 1, preferred_regions=frozenset({"us-west-2"}))
    assert best(req, clusters=[east, west]) == west.name


def test_preference_does_not_beat_a_large_price_gap() -> None:
    req = Requirement("H100", 1, preferred_regions=frozenset({"us-west-2"}))
    pricey_west = cluster("aws", "us-west-2", "us-west-2a", 9.0)
    assert best(req, clusters=[AWS_E1A, pricey_west]) == AWS_E1A.name


def test_full_cluster_moves_placement_to_the_next() -> None:
    usage = ClusterUsage({AWS_E1A.name: 8})
    assert best(usage=usage) == AWS_E1B.name
    # 7 of 8 used: a 2-GPU replica no longer fits, a 1-GPU one does.
    usage = ClusterUsage({AWS_E1A.name: 7})
    assert best(usage=usage) == AWS_E1A.name
    assert best(Requirement("H100", 2), usage=usage) == AWS_E1B.name


def test_blocked_zone_moves_placement_to_the_next_zone() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=60.0, reason="InsufficientInstanceCapacity")
    assert best(blocklist=bl, now=1.0) == AWS_E1B.name


def test_blocked_cloud_excludes_all_its_regions() -> None:
    bl = Blocklist()
    bl.block(Scope.CLOUD, AWS_E1A, now=0.0, ttl=60.0)
    ranked = place(H100x1, WORLD, ClusterUsage(), {}, bl, {}, 1.0)
    assert names(ranked) == [GCP_EU4A.name, GCP_C1A.name]


def test_expired_block_no_longer_excludes() -> None:
    bl = Blocklist()
    bl.block(Scope.REGION, AWS_E1A, now=0.0, ttl=60.0)
    assert best(blocklist=bl, now=59.0) == GCP_EU4A.name
    assert best(blocklist=bl, now=60.0) == AWS_E1A.name


def test_down_cluster_is_excluded() -> None:
    down = cluster("aws", "us-east-1", "us-east-1a", 3.0, up=False)
    assert best(clusters=[down, AWS_E1B]) == AWS_E1B.name


def test_accelerator_must_match_and_cpu_replicas_go_to_cpu_pools() -> None:
    cpu = cluster("aws", "us-east-1", "us-east-1a", 0.1, gpus=4, accelerator="")
    assert best(Requirement("", 0), clusters=[AWS_E1A, cpu]) == cpu.name
    assert best(Requirement("A100", 1), clusters=[AWS_E1A, cpu, cluster(
        "gcp", "us-central1", "us-central1-a", 2.0, accelerator="A100")]).endswith("/a100")
    # A CPU replica takes one slot: four fit in a 4-slot pool, a fifth does not.
    assert place(Requirement(), [cpu], ClusterUsage({cpu.name: 3}), {}, Blocklist(), {}, 0.0)
    assert not place(Requirement(), [cpu], ClusterUsage({cpu.name: 4}), {}, Blocklist(), {}, 0.)


def test_spread_prefers_regions_with_fewer_replicas_of_the_deployment() -> None:
    # us-east-1 is 0.2 $/h cheaper than europe-west4 but already holds one replica.
    assert best(by_region={"us-east-1": 1}) == GCP_EU4A.name
    assert best(Requirement("H100", 1, spread=False), by_region={"us-east-1": 1}) == AWS_E1A.name


def test_traffic_pulls_placement_toward_its_region() -> None:
    latency = LatencyTable.from_nested({"europe-west4": {"us-east-1": 80.0, "us-west-2": 140.0,
                                                         "us-central1": 100.0}})
    assert best(traffic={"europe-west4": 1.0}, latency=latency) == GCP_EU4A.name
    assert best(traffic={"us-east-1": 1.0}, latency=latency) == AWS_E1A.name
    # Latency that is cheap enough does not outweigh price.
    cheap_ms = Weights(latency_cost_per_ms=0.0001)
    assert best(traffic={"europe-west4": 1.0}, latency=latency, weights=cheap_ms) == AWS_E1A.name


def test_ties_are_broken_by_cluster_name_whatever_the_input_order() -> None:
    assert best(clusters=[AWS_E1B, AWS_E1A]) == AWS_E1A.name
    assert best(clusters=list(reversed(WORLD))) == AWS_E1A.name


def test_nothing_fits_says_which_rule_excluded_each_cluster() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=600.0, reason="capacity")
    down = cluster("gcp", "us-central1", "us-central1-b", 3.0, up=False)
    l4 = cluster("gcp", "us-central1", "us-central1-c", 1.0, accelerator="L4")
    result = evaluate(H100x1, [AWS_E1A, AWS_E1B, down, l4], ClusterUsage({AWS_E1B.name: 8}),
                      {}, bl, {}, 10.0)
    assert result.best is None
    assert {r.cluster: r.rule for r in result.rejections} == {
        AWS_E1A.name: Rule.BLOCKED, AWS_E1B.name: Rule.NO_CAPACITY,
        down.name: Rule.CLUSTER_DOWN, l4.name: Rule.WRONG_ACCELERATOR,
    }
    message = str(result.error())
    assert "1x H100" in message and "capacity 8/8 used" in message
    with pytest.raises(PlacementError, match="no clusters are known"):
        place_one(H100x1, [], ClusterUsage(), {}, Blocklist(), {}, 0.0)
