"""SimCloudProvider (a SIMULATOR): injected faults surface as ProviderErrors with the scope
the control plane blocks, and an outage kills the replicas running there."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from basalt_tools.natsserver import NatsServer
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import ProviderError
from services.mcm.core.inventory import DeploymentId, Scope
from services.mcm.core.placement import Requirement
from services.mcm.core.reconcile import (
    ObservedReplica,
    Plan,
    PlanContext,
    StopReason,
    Target,
    observed_from_record,
    plan,
)
from services.mcm.providers.simcloud import SimCloudProvider
from services.mcm.providers.simworld import parse_config
from tests.mcm.providers.conftest import OWNER, is_ready, record_of, sim_request, wait_for

pytestmark = pytest.mark.integration

CONFIG = {"clouds": {
    "aws": {"prices": {"CPU": 0.10}, "regions": {
        "us-east-1": {"zones": {"us-east-1a": {"CPU": 4}, "us-east-1b": {"CPU": 4}}}}},
    "gcp": {"prices": {"CPU": 0.09}, "regions": {
        "us-central1": {"zones": {"us-central1-a": {"CPU": 4}}}}},
}}
AWS_A = "aws/us-east-1/us-east-1a/cpu"
AWS_B = "aws/us-east-1/us-east-1b/cpu"
GCP_A = "gcp/us-central1/us-central1-a/cpu"


@pytest.fixture
async def sim(tmp_path: Path) -> AsyncIterator[SimCloudProvider]:
    p = SimCloudProvider(parse_config(CONFIG), tmp_path / "state", grace_s=20.0)
    yield p
    await p.close()


async def test_capacity_error_raises_zone_scope_and_starts_nothing(
        sim: SimCloudProvider, nats_server: NatsServer, replicas_kv) -> None:
    sim.inject_capacity_error("us-east-1a", count=1)
    with pytest.raises(ProviderError) as e:
        await sim.launch(sim_request(nats_server.url, "cap-1", AWS_A))
    assert e.value.scope is Scope.ZONE and e.value.cluster == AWS_A
    assert sim.local.running() == []
    # The fault was for one launch; the next one in that zone starts, tagged with its place.
    await sim.launch(sim_request(nats_server.url, "cap-2", AWS_A))
    rec = await wait_for(replicas_kv, "cap-2", is_ready)
    assert rec is not None and (rec.region, rec.zone, rec.cluster) == ("us-east-1",
                                                                      "us-east-1a", AWS_A)


async def test_cloud_outage_kills_its_replicas_and_fails_launches_there(
        sim: SimCloudProvider, nats_server: NatsServer, replicas_kv) -> None:
    for rid, cluster in (("out-aws-a", AWS_A), ("out-aws-b", AWS_B), ("out-gcp", GCP_A)):
        await sim.launch(sim_request(nats_server.url, rid, cluster))
    await wait_for(replicas_kv, "out-gcp", is_ready)

    assert sim.fail_cloud("aws") == ["out-aws-a", "out-aws-b"]
    assert sim.local.running() == ["out-gcp"]
    assert sim.local.returncode("out-aws-a") == -9, "killed, not drained"
    assert {c.name: c.up for c in sim.clusters()} == {AWS_A: False, AWS_B: False, GCP_A: True}
    with pytest.raises(ProviderError) as e:
        await sim.launch(sim_request(nats_server.url, "out-aws-c", AWS_B))
    assert e.value.scope is Scope.CLOUD

    sim.restore("aws")
    assert all(c.up for c in sim.clusters())


async def test_an_outage_during_the_launch_delay_fails_the_launch(
        tmp_path: Path, nats_server: NatsServer) -> None:
    config = parse_config({**CONFIG, "launch_delay_s": 5.0})

    async def outage_while_waiting(seconds: float) -> None:
        assert seconds == 5.0
        provider.fail_region("us-east-1")

    provider = SimCloudProvider(config, tmp_path, sleep=outage_while_waiting)
    with pytest.raises(ProviderError) as e:
        await provider.launch(sim_request(nats_server.url, "delayed", AWS_A))
    assert e.value.scope is Scope.REGION
    assert provider.local.running() == [] and provider.world.used(AWS_A) == 0


async def test_plan_and_simcloud_fail_over_a_cloud_outage_end_to_end(
        sim: SimCloudProvider, nats_server: NatsServer, replicas_kv) -> None:
    """The reconcile decision driving the SIMULATOR: spread over two clouds, lose one,
    replace its replica on the other (the loop's I/O is done by hand here)."""
    dep = DeploymentId("dep-a")
    targets = {dep: Target(2, Requirement())}

    async def run(p: Plan) -> None:
        for a in p.launches:
            req = sim_request(nats_server.url, a.replica_id, a.cluster.name)
            await sim.launch(req)
        for a in p.launches:
            await wait_for(replicas_kv, a.replica_id, is_ready)

    async def views(ids: list[str]) -> list[ObservedReplica]:
        recs = [await record_of(replicas_kv, rid) for rid in ids]
        return [observed_from_record(r, 0.0) for r in recs if r is not None]

    first = plan(targets, [], [], PlanContext(OWNER, sim.clusters(), Blocklist(), 0.0, "t"))
    assert sorted(a.cluster.cloud for a in first.launches) == ["aws", "gcp"], "spread"
    await run(first)
    on_aws = next(a.replica_id for a in first.launches if a.cluster.cloud == "aws")

    assert sim.fail_cloud("aws") == [on_aws]
    # The killed replica's record lingers (READY) until its TTL; the plan sees its cluster down.
    seen = await views([a.replica_id for a in first.launches])
    assert len(seen) == 2
    second = plan(targets, seen, [], PlanContext(OWNER, sim.clusters(), Blocklist(), 10.0, "t",
                                                 seq=first.next_seq))
    assert [(s.replica_id, s.reason) for s in second.stops] == [(on_aws, StopReason.CLUSTER_DOWN)]
    assert [a.cluster.name for a in second.launches] == [GCP_A]
    await sim.stop(second.stops[0].replica_id)  # the process is already gone: a no-op
    await run(second)
    assert len(sim.local.running()) == 2
