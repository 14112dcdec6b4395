"""The mcm process end to end with sim-engine replicas: killed mid-scale and restarted it ends
with exactly the desired replicas; stopped, it leaves its replicas for the next start to
adopt and applies the scale commands published meanwhile; `--stop-replicas-on-exit` leaves
nothing running."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.kv import KeyValue

from basalt import bus
from basalt.pb import events_pb2
from basalt.scalestream import publish_scale
from basalt_tools.natsserver import NatsServer
from services.mcm.reconciler import read_replicas
from services.mcm.store import Store
from tests.mcm_process import (
    FAST_SIM_ARGS,
    McmProcess,
    eventually,
    kill_runtimes,
    ours,
    ready_ids,
    runtime_pids,
    runtimes,
)

pytestmark = pytest.mark.integration

FAST = ["--reconcile-period", "0.5", "--replica-grace", "10"]


@pytest.fixture
async def kv(client: Client) -> KeyValue:
    return await bus.replicas_bucket(client)


@pytest.fixture
async def cleanup(client: Client) -> AsyncIterator[list[McmProcess]]:
    """mcm processes a test starts; killed afterwards with every replica they left."""
    started: list[McmProcess] = []
    yield started
    for mcm in started:
        mcm.kill()
    for owner in {m.owner for m in started if m.owner}:
        kill_runtimes(owner)
    store = await Store.open(client)
    for dep in await store.list():
        await store.delete(dep.id)


async def exactly_ready(kv: KeyValue, owner: str, dep: str, n: int,
                        timeout: float = 30.0) -> dict[str, events_pb2.ReplicaRecord]:
    """Exactly `n` replica records of `dep`, all READY, and `n` runtime processes."""
    async def probe() -> dict[str, events_pb2.ReplicaRecord] | None:
        recs = ours(await read_replicas(kv), owner, dep)
        ok = len(recs) == n == len(ready_ids(recs)) and len(runtime_pids(owner)) == n
        return recs if ok else None
    return await eventually(probe, timeout, f"exactly {n} READY replicas of {dep}")


def _body(dep: str, replicas: int) -> dict[str, object]:
    return {"id": dep, "engine": "sim", "replicas": replicas, "engine_args": FAST_SIM_ARGS}


async def test_mcm_killed_mid_scale_and_restarted_ends_with_exactly_the_desired_replicas(
        nats: NatsServer, tmp_path: Path, kv: KeyValue, cleanup: list[McmProcess]) -> None:
    mcm = McmProcess(nats.url, tmp_path, FAST, name="mcm-1").start()
    cleanup.append(mcm)
    owner = mcm.owner
    api = f"{mcm.base_url}/v1/models/restart-model/deployments"
    async with httpx.AsyncClient(timeout=10.0) as http:
        assert (await http.post(api, json=_body("restart", 1))).status_code == 201
        [first] = await exactly_ready(kv, owner, "restart", 1)
        ever: set[str] = set()  # every replica of ours ever running

        async def watch() -> None:
            while True:
                ever.update(runtimes(owner).values())
                await asyncio.sleep(0.02)

        watcher = asyncio.create_task(watch())
        r = await http.post(f"{api}/restart/scale", json={"replicas": 3})
        assert r.status_code == 200, r.text

    async def new_runtime_started() -> bool:
        return len(runtime_pids(owner)) >= 2

    await eventually(new_runtime_started, 10.0, "a second runtime", every=0.02)
    mcm.kill()  # mid-scale: the new replicas are still starting
    started_before_kill = set(runtimes(owner).values())
    records_at_kill = ours(await read_replicas(kv), owner, "restart")
    print(f"killed mcm with {len(started_before_kill)} runtimes, "
          f"{len(ready_ids(records_at_kill))} READY")

    again = McmProcess(nats.url, tmp_path, FAST, name="mcm-2").start()
    cleanup.append(again)
    assert again.owner == owner, "the owner id is kept in the state dir"
    final = await exactly_ready(kv, owner, "restart", 3)
    await asyncio.sleep(2.0)  # a few more periods: nothing else starts or stops
    watcher.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await watcher
    assert first in final and started_before_kill <= set(final), "adopted, not replaced"
    assert ever == set(final), "no replica beyond the desired three ever ran"
    assert set(runtimes(owner).values()) == set(final), "no orphan process"


async def test_replicas_outlive_a_stopped_mcm_and_a_command_sent_meanwhile_applies_on_start(
        nats: NatsServer, tmp_path: Path, client: Client, kv: KeyValue,
        cleanup: list[McmProcess]) -> None:
    mcm = McmProcess(nats.url, tmp_path, FAST, name="mcm-1").start()
    cleanup.append(mcm)
    owner = mcm.owner
    async with httpx.AsyncClient(timeout=10.0) as http:
        api = f"{mcm.base_url}/v1/models/adopt-model/deployments"
        assert (await http.post(api, json=_body("adopt", 1))).status_code == 201
        [first] = await exactly_ready(kv, owner, "adopt", 1)
        clusters = (await http.get(f"{mcm.base_url}/v1/clusters")).json()["clusters"]
        assert [(c["name"], c["used"]) for c in clusters] == [("local", 1)]
    assert mcm.terminate() == 0

    await publish_scale(client, "adopt", 2, "cli")  # while no mcm runs
    await asyncio.sleep(1.0)
    recs = ours(await read_replicas(kv), owner, "adopt")
    assert ready_ids(recs) == {first} and len(runtime_pids(owner)) == 1, "left running"

    again = McmProcess(nats.url, tmp_path, [*FAST, "--stop-replicas-on-exit"],
                       name="mcm-2").start()
    cleanup.append(again)
    final = await exactly_ready(kv, owner, "adopt", 2)
    assert first in final, "the running replica was adopted"
    assert again.terminate() == 0
    assert runtime_pids(owner) == [], "--stop-replicas-on-exit leaves nothing running"
    assert ours(await read_replicas(kv), owner, "adopt") == {}
