"""What every provider must do, run against each one: launch a real runtime replica that
registers itself in NATS KV with our labels, list it as owned, stop it cleanly, and leave
nothing running on close."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from basalt.ids import ReplicaId
from basalt_tools.natsserver import NatsServer
from services.mcm.core.provider import Provider
from services.mcm.providers.local import LocalProvider
from services.mcm.providers.simcloud import SimCloudProvider
from services.mcm.providers.simworld import parse_config
from tests.mcm.providers.conftest import OWNER, is_gone, is_ready, sim_request, wait_for

pytestmark = pytest.mark.integration

SIM_CONFIG = {"launch_delay_s": 0.1, "clouds": {"aws": {"prices": {"CPU": 0.1}, "regions": {
    "us-east-1": {"zones": {"us-east-1a": {"CPU": 4}}}}}}}


def local_procs(provider: Provider) -> LocalProvider:
    return provider.local if isinstance(provider, SimCloudProvider) else provider  # type: ignore[return-value]


@pytest.fixture(params=["local", "simcloud"])
async def provider(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Provider]:
    p: Provider
    if request.param == "local":
        p = LocalProvider(tmp_path / "state", grace_s=20.0)
    else:
        p = SimCloudProvider(parse_config(SIM_CONFIG), tmp_path / "state", grace_s=20.0)
    assert isinstance(p, Provider)
    yield p
    await p.close()


async def test_launch_registers_ready_and_stop_drains(provider: Provider,
                                                      nats_server: NatsServer,
                                                      replicas_kv) -> None:
    cluster = provider.clusters()[0]
    req = sim_request(nats_server.url, f"contract-{provider.name}", cluster.name)
    handle = await provider.launch(req)
    assert handle.provider == provider.name and handle.pid

    rec = await wait_for(replicas_kv, req.replica_id, is_ready)
    assert rec is not None
    assert (rec.owner, rec.deployment, rec.cluster) == (OWNER, "dep-a", cluster.name)
    assert (rec.region, rec.zone) == (cluster.region, cluster.zone)
    assert [h.replica_id for h in await provider.list_owned(OWNER)] == [req.replica_id]
    assert await provider.list_owned("another-owner") == []
    assert (await provider.launch(req)).pid == handle.pid, "launching again starts nothing new"

    await provider.stop(req.replica_id)
    assert await wait_for(replicas_kv, req.replica_id, is_gone, timeout=5.0) is None
    assert local_procs(provider).returncode(req.replica_id) == 0
    assert await provider.list_owned(OWNER) == []
    await provider.stop(req.replica_id)  # stopping again is a no-op
    log = Path(handle.log_path or "")
    assert "replica_ready" in log.read_text(), "the replica's output is kept in its log file"


async def test_close_stops_everything_it_started(provider: Provider,
                                                 nats_server: NatsServer) -> None:
    cluster = provider.clusters()[0]
    ids = [ReplicaId(f"close-{provider.name}-{i}") for i in range(2)]
    for rid in ids:
        await provider.launch(sim_request(nats_server.url, rid, cluster.name))
    procs = local_procs(provider)
    assert procs.running() == sorted(ids)
    await provider.close()
    assert procs.running() == []
    assert all(procs.returncode(rid) is not None for rid in ids)
