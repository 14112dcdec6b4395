"""The control plane and the node caches together, for real: a reconcile loop over two
clusters of equal price, each with its own coldstart service. The replica goes where the
weights are; a replica placed where they are not starts only after the node fetched them, and
each start records where its time went."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from basalt import bus
from basalt.deployfile import Deployment, Weights
from basalt.pb import events_pb2
from basalt_tools.natsserver import NatsServer
from services.mcm.core.inventory import Cluster, ClusterName
from services.mcm.providers import LocalProvider
from services.mcm.reconciler import Reconciler, ReconcilerSettings, read_replicas
from services.mcm.store import Store
from services.mcm.weights import WeightsClient
from tests.coldstart_process import ColdstartProcess
from tests.mcm_process import FAST_SIM_ARGS, eventually, kill_runtimes

pytestmark = pytest.mark.integration

# Same price, different regions (so the spread rule sends a second replica to the other one).
EAST = Cluster(ClusterName("east"), "local", "east", "east-a", "", 4, 0.0)
WEST = Cluster(ClusterName("west"), "local", "west", "west-a", "", 4, 0.0)


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("nats-prefetch")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
def caches(nats: NatsServer, tmp_path: Path) -> Iterator[dict[str, ColdstartProcess]]:
    procs = {n: ColdstartProcess(nats.url, tmp_path / "caches", node=n).start()
             for n in ("east", "west")}
    yield procs
    for p in procs.values():
        p.terminate()


@pytest.fixture
async def loop(nats: NatsServer, tmp_path: Path) -> AsyncIterator[Reconciler]:
    nc = await bus.connect(nats.url, name="test-prefetch")
    owner = f"t-prefetch-{os.getpid()}-{time.monotonic_ns()}"
    provider = LocalProvider(tmp_path / "replicas", clusters=[EAST, WEST], grace_s=10.0)
    rec = Reconciler(await Store.open(nc), await bus.replicas_bucket(nc), provider, owner,
                     ReconcilerSettings(nats_url=nats.url, stale_after_s=3.0),
                     weights=await WeightsClient.open(nc))
    task = asyncio.create_task(rec.run(0.3))
    try:
        yield rec
    finally:
        rec.request_stop()
        await task
        await rec.close(stop_replicas=True)
        kill_runtimes(owner)
        for dep in await rec.store.list():
            await rec.store.delete(dep.id)
        await nc.close()


async def _ready(rec: Reconciler, dep: str, n: int) -> dict[str, events_pb2.ReplicaRecord]:
    async def probe() -> dict[str, events_pb2.ReplicaRecord] | None:
        recs = {k: r for k, r in (await read_replicas(rec.replicas)).items()
                if r.owner == rec.owner and r.deployment == dep
                and r.state == events_pb2.REPLICA_STATE_READY}
        return recs if len(recs) == n else None
    return await eventually(probe, 60.0, f"{n} READY replicas of {dep}")


async def test_the_replica_goes_where_the_weights_are_and_a_cold_node_fetches_first(
        loop: Reconciler, caches: dict[str, ColdstartProcess], tiny_model: Path,
        tmp_path: Path) -> None:
    weights_dir = tmp_path / "weights"
    shutil.copytree(tiny_model, weights_dir)
    (weights_dir / "model-extra.safetensors").write_bytes(os.urandom(4 << 20))
    source = Weights(uri=str(weights_dir))
    # West already holds the weights (a `basalt weights pull` earlier); east holds nothing.
    assert loop.weights is not None
    await loop.weights.prefetch("west", source.to_proto(), "", 60)
    dep = Deployment(id="cached", model="cached-model", engine="sim", replicas=1,
                     weights=source, engine_args=dict(FAST_SIM_ARGS))
    await loop.store.create(dep.to_record(created_ts=time.time()))
    [first] = (await _ready(loop, "cached", 1)).values()
    assert first.cluster == "west", "equal prices: the node holding the weights wins"
    assert first.start.tier in ("node", "warm") and first.start.fetched_bytes == 0
    assert first.weights_revision

    # A second replica: the spread rule sends it to east, which must fetch the weights first.
    found = await loop.store.get("cached")
    assert found is not None
    found.record.desired_replicas = 2
    await loop.store.update(found.record, found.revision)
    recs = await _ready(loop, "cached", 2)
    [second] = [r for r in recs.values() if r.cluster == "east"]
    s = second.start
    assert s.tier == "source" and s.fetched_bytes >= 4 << 20
    assert 0 < s.placed_ts <= s.fetched_ts <= s.launched_ts <= s.engine_ts <= s.ready_ts, s
    assert second.started_ts == s.placed_ts, "the autoscaler's cold start counts the fetch"
    east_rev = caches["east"].cache_dir / "revisions" / second.weights_revision
    assert (east_rev / "model-extra.safetensors").read_bytes() == \
        (weights_dir / "model-extra.safetensors").read_bytes()


async def test_a_cluster_without_a_cache_service_fails_the_start_with_the_reason(
        loop: Reconciler, tmp_path: Path) -> None:
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "a.bin").write_bytes(b"x" * 10)
    dep = Deployment(id="nocache", model="nocache-model", engine="sim", replicas=1,
                     weights=Weights(uri=str(tmp_path / "w")), engine_args=dict(FAST_SIM_ARGS))
    await loop.store.create(dep.to_record(created_ts=time.time()))

    async def failed() -> str | None:
        f = loop.failures.get("nocache")  # type: ignore[call-overload]
        return f.last_error if f else None
    error = await eventually(failed, 30.0, "a recorded start failure")
    assert "no coldstart service" in error
    assert not [r for r in (await read_replicas(loop.replicas)).values()
                if r.deployment == "nocache"]

