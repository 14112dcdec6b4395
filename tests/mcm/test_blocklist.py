"""Blocklist: a failure blocks what its scope says, around the failing cluster, until it expires."""

from __future__ import annotations

from services.mcm.core.blocklist import Blocklist, Scope
from tests.mcm.clusters import AWS_E1A, AWS_E1B, AWS_W2A, GCP_EU4A


def test_zone_block_covers_only_that_zone() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=100.0, ttl=60.0)
    assert bl.is_blocked(AWS_E1A, 100.0)
    assert not bl.is_blocked(AWS_E1B, 100.0)
    assert not bl.is_blocked(AWS_W2A, 100.0)


def test_region_block_covers_every_zone_of_the_region() -> None:
    bl = Blocklist()
    bl.block(Scope.REGION, AWS_E1A, now=0.0, ttl=60.0)
    assert bl.is_blocked(AWS_E1A, 1.0) and bl.is_blocked(AWS_E1B, 1.0)
    assert not bl.is_blocked(AWS_W2A, 1.0)


def test_cloud_block_covers_all_its_regions_and_no_other_cloud() -> None:
    bl = Blocklist()
    bl.block(Scope.CLOUD, AWS_E1A, now=0.0, ttl=60.0)
    assert all(bl.is_blocked(c, 1.0) for c in (AWS_E1A, AWS_E1B, AWS_W2A))
    assert not bl.is_blocked(GCP_EU4A, 1.0)


def test_blocks_expire() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=30.0)
    assert bl.is_blocked(AWS_E1A, 29.9)
    assert not bl.is_blocked(AWS_E1A, 30.0)
    assert bl.active(30.0) == []


def test_a_shorter_new_block_does_not_shorten_a_longer_one() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=300.0, reason="capacity")
    bl.block(Scope.ZONE, AWS_E1A, now=10.0, ttl=30.0)
    assert bl.is_blocked(AWS_E1A, 200.0)
    bl.block(Scope.ZONE, AWS_E1A, now=250.0, ttl=300.0)
    assert bl.is_blocked(AWS_E1A, 500.0)


def test_blocking_names_the_widest_block() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=60.0, reason="no H100")
    bl.block(Scope.CLOUD, AWS_E1A, now=0.0, ttl=60.0, reason="aws outage")
    found = bl.blocking(AWS_E1A, 1.0)
    assert found is not None and found.scope is Scope.CLOUD and found.key == "aws"
    assert found.reason == "aws outage"


def test_prune_forgets_only_expired_blocks() -> None:
    bl = Blocklist()
    bl.block(Scope.ZONE, AWS_E1A, now=0.0, ttl=10.0)
    bl.block(Scope.ZONE, AWS_E1B, now=0.0, ttl=100.0)
    bl.prune(50.0)
    assert [b.key for b in bl.active(50.0)] == ["aws/us-east-1/us-east-1b"]
    assert bl.is_blocked(AWS_E1B, 50.0)
