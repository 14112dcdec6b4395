"""The simcloud SIMULATOR's world: config parsing, prices, outages and capacity errors."""

from __future__ import annotations

import pytest

from basalt.ids import ReplicaId
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import (
    ProviderError,
    SimCloudConfigError,
    UnknownCluster,
    UnknownSimTarget,
)
from services.mcm.core.inventory import ClusterUsage, Scope
from services.mcm.core.placement import Requirement, place_one
from services.mcm.providers.simcloud import load_config
from services.mcm.providers.simworld import SimWorld, parse_config

SMALL = {
    "launch_delay_s": 0.5,
    "clouds": {
        "aws": {"prices": {"H100": 4.0, "CPU": 0.1}, "regions": {
            "us-east-1": {"zones": {"us-east-1a": {"H100": 2, "CPU": 2},
                                    "us-east-1b": {"H100": 2}}},
            "eu-west-1": {"price_factor": 1.5, "launch_delay_s": 0.0,
                          "zones": {"eu-west-1a": {"H100": 2}}}}},
        "gcp": {"prices": {"H100": 3.0}, "regions": {
            "us-central1": {"zones": {"us-central1-a": {"H100": 2}}}}},
    },
    "latency_ms": {"us-east-1": {"eu-west-1": 70}},
}
E1A = "aws/us-east-1/us-east-1a/h100"
E1B = "aws/us-east-1/us-east-1b/h100"
EU = "aws/eu-west-1/eu-west-1a/h100"
GCP = "gcp/us-central1/us-central1-a/h100"


def world() -> SimWorld:
    return SimWorld(parse_config(SMALL))


def rid(n: int) -> ReplicaId:
    return ReplicaId(f"r{n}")


def test_default_config_has_three_clouds_with_differing_prices() -> None:
    config = load_config()
    clouds = {p.cluster.cloud for p in config.pools}
    assert clouds == {"aws", "gcp", "azure"}
    h100 = {(p.cluster.cloud, p.cluster.region): p.cluster.price_per_gpu_hour
            for p in config.pools if p.cluster.accelerator == "H100"}
    assert len(set(h100.values())) > 3
    assert {p.cluster.accelerator for p in config.pools} == {"H100", "A100", "L4", ""}
    assert config.latency.between("europe-west4", "westeurope") == 8


def test_clusters_carry_price_factor_delay_and_cpu_pools() -> None:
    w = world()
    by_name = {str(c.name): c for c in w.clusters()}
    assert by_name[EU].price_per_gpu_hour == pytest.approx(6.0)
    assert by_name["aws/us-east-1/us-east-1a/cpu"].accelerator == ""
    assert w.launch_delay_s(E1A) == 0.5 and w.launch_delay_s(EU) == 0.0
    assert all(c.up for c in by_name.values())


@pytest.mark.parametrize(("patch", "where"), [
    ({"clouds": {"aws": {"prices": {"H100": 1.0}, "regions": {
        "r1": {"zones": {"z1": {"A100": 1}}}}}}}, "clouds.aws.regions.r1.zones.z1.A100"),
    ({"clouds": {"aws": {"prices": {"H100": 1.0}, "regions": {
        "r1": {"zones": {"z1": {"H100": -1}}}}}}}, "clouds.aws.regions.r1.zones.z1.H100"),
    ({"clouds": {"aws": {"prices": {"H100": 1.0}, "regions": {
        "r1": {"zone": {}}}}}}, "clouds.aws.regions.r1"),
    ({"clouds": {"a": {"prices": {"H100": 1.0}, "regions": {"r1": {"zones": {"z": {"H100": 1}}}}},
                 "b": {"prices": {"H100": 1.0}, "regions": {"r1": {"zones": {"y": {"H100": 1}}}}}}},
     "r1"),
    ({"clouds": {}}, "clouds"),
])
def test_bad_config_names_where(patch: dict, where: str) -> None:
    with pytest.raises(SimCloudConfigError) as e:
        parse_config(patch)
    assert e.value.where == where


def test_capacity_error_fails_the_next_n_launches_in_that_zone_only() -> None:
    w = world()
    w.inject_capacity_error("us-east-1a", count=2)
    for n in (1, 2):
        with pytest.raises(ProviderError) as e:
            w.admit(rid(n), E1A, 1)
        assert e.value.scope is Scope.ZONE and e.value.cluster == E1A
    w.admit(rid(3), E1B, 1)
    assert w.admit(rid(4), E1A, 1).name == E1A


def test_capacity_error_without_count_lasts_until_restored() -> None:
    w = world()
    w.inject_capacity_error("us-east-1a")
    for n in range(3):
        with pytest.raises(ProviderError):
            w.admit(rid(n), E1A, 1)
    w.restore("us-east-1a")
    w.admit(rid(9), E1A, 1)


def test_full_pool_is_a_zone_capacity_error_and_stops_free_capacity() -> None:
    w = world()
    w.admit(rid(1), E1A, 2)
    assert w.admit(rid(1), E1A, 2).name == E1A, "admitting again allocates nothing new"
    with pytest.raises(ProviderError, match="0 of 2") as e:
        w.admit(rid(2), E1A, 1)
    assert e.value.scope is Scope.ZONE
    w.release(rid(1))
    w.admit(rid(2), E1A, 1)


def test_cloud_outage_downs_its_clusters_and_fails_launches_with_cloud_scope() -> None:
    w = world()
    w.admit(rid(1), E1A, 1)
    w.admit(rid(2), EU, 1)
    w.admit(rid(3), GCP, 1)
    assert w.fail(Scope.CLOUD, "aws") == [rid(1), rid(2)]
    up = {str(c.name): c.up for c in w.clusters()}
    assert not up[E1A] and not up[EU] and up[GCP]
    with pytest.raises(ProviderError) as e:
        w.admit(rid(4), E1B, 1)
    assert e.value.scope is Scope.CLOUD
    # Placement over the world's clusters now goes to the other cloud.
    choice = place_one(Requirement("H100", 1), w.clusters(), ClusterUsage(), {}, Blocklist(),
                       {}, 0.0)
    assert choice.cluster.name == GCP
    w.restore("aws")
    assert all(c.up for c in w.clusters())


def test_region_outage_has_region_scope_and_spares_other_regions() -> None:
    w = world()
    w.fail(Scope.REGION, "us-east-1")
    with pytest.raises(ProviderError) as e:
        w.admit(rid(1), E1B, 1)
    assert e.value.scope is Scope.REGION
    w.admit(rid(2), EU, 1)


def test_unknown_names_are_errors_that_list_what_exists() -> None:
    w = world()
    with pytest.raises(UnknownCluster) as e:
        w.admit(rid(1), "aws/nowhere", 1)
    assert e.value.scope is Scope.CLUSTER and E1A in e.value.known
    with pytest.raises(UnknownSimTarget, match="us-east-1a"):
        w.inject_capacity_error("us-east-9z")
    with pytest.raises(UnknownSimTarget):
        w.fail(Scope.CLOUD, "oracle")
    with pytest.raises(UnknownSimTarget):
        w.restore("oracle")
