"""The reconcile loop against a real nats-server and real sim-engine runtime processes: scale
up and down, replace a killed replica, and place across the simcloud SIMULATOR (cheapest
first, around a zone out of capacity, away from a cloud that went down, allowed regions)."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from basalt import bus
from basalt.pb import deploy_pb2, events_pb2
from basalt_tools.natsserver import NatsServer
from services.mcm.providers import LocalProvider, Provider, SimCloudProvider, parse_config
from services.mcm.reconciler import Reconciler, ReconcilerSettings, read_replicas
from services.mcm.store import Store
from tests.mcm_process import (
    eventually,
    kill_runtimes,
    ours,
    ready_ids,
    runtime_pids,
    sim_deployment,
)

pytestmark = pytest.mark.integration

PERIOD = 0.3
# Prices per CPU slot-hour: aws us-east-1 cheapest (two zones), then gcp, then azure.
SIM_CONFIG = {"clouds": {
    "aws": {"prices": {"CPU": 0.10}, "regions": {
        "us-east-1": {"zones": {"us-east-1a": {"CPU": 4}, "us-east-1b": {"CPU": 4}}}}},
    "gcp": {"prices": {"CPU": 0.12}, "regions": {
        "us-central1": {"zones": {"us-central1-a": {"CPU": 4}}}}},
    "azure": {"prices": {"CPU": 0.15}, "regions": {
        "westeurope": {"zones": {"westeurope-1": {"CPU": 4}}}}},
}}


@dataclass
class Env:
    store: Store
    kv: object
    provider: Provider
    reconciler: Reconciler

    @property
    def owner(self) -> str:
        return self.reconciler.owner

    async def deploy(self, rec: deploy_pb2.DeploymentRecord) -> None:
        await self.store.create(rec)

    async def scale(self, dep: str, replicas: int) -> None:
        found = await self.store.get(dep)
        assert found is not None
        found.record.desired_replicas = replicas
        await self.store.update(found.record, found.revision)

    async def records(self, dep: str) -> dict[str, events_pb2.ReplicaRecord]:
        return ours(await read_replicas(self.kv), self.owner, dep)  # type: ignore[arg-type]

    async def exactly_ready(self, dep: str, n: int, timeout: float = 30.0,
                            ) -> dict[str, events_pb2.ReplicaRecord]:
        """Wait until `dep` has exactly `n` replicas, all READY, and `n` processes run."""
        async def probe() -> dict[str, events_pb2.ReplicaRecord] | None:
            recs = await self.records(dep)
            running = [h for h in await self.provider.list_owned(self.owner)
                       if h.deployment_id == dep]
            ok = len(recs) == n and len(ready_ids(recs)) == n and len(running) == n
            return recs if ok else None
        return await eventually(probe, timeout, f"exactly {n} READY replicas of {dep}")


async def _env(nats: NatsServer, provider: Provider, owner: str) -> AsyncIterator[Env]:
    nc = await bus.connect(nats.url, name="test-reconciler")
    store = await Store.open(nc)
    kv = await bus.replicas_bucket(nc)
    rec = Reconciler(store, kv, provider, owner,
                     ReconcilerSettings(nats_url=nats.url, block_ttl_s=30.0, stale_after_s=3.0))
    loop = asyncio.create_task(rec.run(PERIOD))
    try:
        yield Env(store, kv, provider, rec)
    finally:
        rec.request_stop()
        await loop
        await rec.close(stop_replicas=True)
        kill_runtimes(owner)
        for dep in await store.list():
            await store.delete(dep.id)
        await nc.close()


@pytest.fixture
async def local(nats: NatsServer, tmp_path: Path) -> AsyncIterator[Env]:
    provider = LocalProvider(tmp_path / "replicas", grace_s=10.0)
    async for env in _env(nats, provider, f"t-local-{os.getpid()}-{time.monotonic_ns()}"):
        yield env


@pytest.fixture
async def sim(nats: NatsServer, tmp_path: Path) -> AsyncIterator[Env]:
    provider = SimCloudProvider(parse_config(SIM_CONFIG), tmp_path / "replicas", grace_s=10.0)
    async for env in _env(nats, provider, f"t-sim-{os.getpid()}-{time.monotonic_ns()}"):
        yield env


async def test_scale_one_to_three_to_one_ends_with_exactly_the_desired_ready_replicas(
        local: Env) -> None:
    await local.deploy(sim_deployment("scaled", 1))
    first = set(await local.exactly_ready("scaled", 1))
    await local.scale("scaled", 3)
    three = set(await local.exactly_ready("scaled", 3))
    assert first < three, "scaling up keeps the replica already serving"
    await local.scale("scaled", 1)
    assert set(await local.exactly_ready("scaled", 1)) == first, "newest stopped first"


async def test_a_killed_replica_is_replaced_before_its_record_would_expire(local: Env) -> None:
    await local.deploy(sim_deployment("crashy", 1))
    [victim] = await local.exactly_ready("crashy", 1)
    [handle] = await local.provider.list_owned(local.owner)
    os.kill(handle.pid, signal.SIGKILL)  # type: ignore[arg-type]
    killed_at = time.monotonic()

    async def victim_gone() -> bool:
        return victim not in await local.records("crashy")

    await eventually(victim_gone, 10.0, "the killed replica's record is dropped")
    after = await local.exactly_ready("crashy", 1, timeout=12.0)
    assert victim not in after
    # The dead replica's record would live 15 s; the replacement did not wait for that.
    replaced_in = time.monotonic() - killed_at
    assert replaced_in < 12.0
    print(f"killed replica replaced (READY) in {replaced_in:.2f}s")
    assert local.reconciler.failures == {}, "a crash after READY is not a failed start"


async def test_simcloud_places_cheapest_first_and_only_in_allowed_regions(sim: Env) -> None:
    await sim.deploy(sim_deployment("cheap", 1))
    await sim.deploy(sim_deployment("eu-only", 1, allowed_regions=["westeurope"]))
    await sim.deploy(sim_deployment("nowhere", 1, allowed_regions=["mars-1"]))
    [cheap] = (await sim.exactly_ready("cheap", 1)).values()
    [eu] = (await sim.exactly_ready("eu-only", 1)).values()
    assert cheap.cluster == "aws/us-east-1/us-east-1a/cpu"
    assert (eu.region, eu.cluster) == ("westeurope", "azure/westeurope/westeurope-1/cpu")
    assert "region not allowed" in str(sim.reconciler.unplaced["nowhere"])
    assert "nowhere" in sim.reconciler.status()["unplaced"]  # type: ignore[operator]
    assert await sim.records("nowhere") == {}


async def test_simcloud_capacity_error_in_a_zone_moves_placement_to_the_next_zone(
        sim: Env) -> None:
    assert isinstance(sim.provider, SimCloudProvider)
    sim.provider.inject_capacity_error("us-east-1a")  # every launch there fails
    await sim.deploy(sim_deployment("zoned", 1))
    [rec] = (await sim.exactly_ready("zoned", 1)).values()
    assert rec.cluster == "aws/us-east-1/us-east-1b/cpu", "same region, next zone"
    blocks = sim.reconciler.status()["blocks"]
    assert [(b["scope"], b["key"]) for b in blocks] == [("zone", "aws/us-east-1/us-east-1a")]  # type: ignore[index,union-attr]


async def test_simcloud_cloud_outage_replaces_its_replicas_elsewhere_within_a_period_or_two(
        sim: Env) -> None:
    assert isinstance(sim.provider, SimCloudProvider)
    await sim.deploy(sim_deployment("spread", 2))
    before = await sim.exactly_ready("spread", 2)
    on_aws = {k for k, r in before.items() if r.cluster.startswith("aws/")}
    assert len(on_aws) == 1, "two replicas spread over two clouds"

    assert sorted(sim.provider.fail_cloud("aws")) == sorted(on_aws)
    t0 = time.monotonic()

    async def replacement_launched() -> bool:
        running = await sim.provider.list_owned(sim.owner)
        return len([h for h in running if h.deployment_id == "spread"]) == 2

    await eventually(replacement_launched, 3 * PERIOD + 1.0, "a replacement launch")
    replaced_in = time.monotonic() - t0
    after = await sim.exactly_ready("spread", 2)
    assert not any(r.cluster.startswith("aws/") for r in after.values())
    assert on_aws.isdisjoint(after)
    print(f"replacement launched {replaced_in:.2f}s after the outage (period {PERIOD}s)")


async def test_a_replica_that_cannot_start_is_retried_with_backoff_and_says_why(
        local: Env) -> None:
    assert isinstance(local.provider, LocalProvider)
    # The runtime refuses this flag value at start and exits.
    await local.deploy(sim_deployment("broken", 1, engine_args={"max_model_len": "0"}))

    async def failed() -> dict | None:
        return local.reconciler.status()["start_failures"].get("broken")  # type: ignore[no-any-return]

    failure = await eventually(failed, 15.0, "a start failure reported")
    assert "exited before it was ready" in failure["last_error"]
    assert "max_model_len" in failure["last_error"], "the log tail says why"
    await asyncio.sleep(3.0)
    launches = list(local.provider.state_dir.glob("broken-*.log"))
    # Without backoff the loop would have started one every 0.3 s period (10 more by now).
    assert len(launches) <= 3, launches
    assert await local.records("broken") == {}


async def test_a_restarted_loop_adopts_a_launch_whose_replica_has_not_registered_yet(
        nats: NatsServer, tmp_path: Path) -> None:
    """A slow engine (vLLM imports for many seconds) registers long after its launch; a
    control plane restarted in between must count it, not launch a second one."""
    owner = f"t-adopt-{os.getpid()}-{time.monotonic_ns()}"
    nc = await bus.connect(nats.url, name="test-adopt")
    store, kv = await Store.open(nc), await bus.replicas_bucket(nc)
    settings = ReconcilerSettings(nats_url=nats.url)
    slow_python = tmp_path / "slow-python"
    slow_python.write_text(f'#!/bin/sh\nsleep 3\nexec {sys.executable} "$@"\n')
    slow_python.chmod(0o755)
    first = LocalProvider(tmp_path / "replicas", grace_s=10.0, python=str(slow_python))
    try:
        await store.create(sim_deployment("slow", 1))
        before = Reconciler(store, kv, first, owner, settings)
        assert len((await before.tick()).launches) == 1
        await before.settle()  # launched; the process is still importing, no record yet
        assert ours(await read_replicas(kv), owner, "slow") == {}

        # The control plane restarts: a new provider on the same state dir, the same owner.
        after = Reconciler(store, kv, LocalProvider(tmp_path / "replicas", grace_s=10.0),
                           owner, settings)
        assert (await after.tick()).actions == []
        assert len(runtime_pids(owner)) == 1
    finally:
        await first.close()
        kill_runtimes(owner)
        await store.delete("slow")
        await nc.close()
