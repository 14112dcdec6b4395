"""LocalProvider: flags reach the runtime, failures surface with their log, and a new provider
on the same state dir finds and stops the replicas an earlier one started."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from basalt_tools.natsserver import NatsServer
from services.mcm.core.errors import ReplicaExited, UnknownCluster
from services.mcm.core.inventory import Scope
from services.mcm.providers.local import LOCAL_CLUSTER, LocalProvider
from tests.mcm.providers.conftest import OWNER, is_gone, is_ready, sim_request, wait_for

pytestmark = pytest.mark.integration


async def test_engine_args_reach_the_runtime(tmp_path: Path, nats_server: NatsServer,
                                             replicas_kv) -> None:
    p = LocalProvider(tmp_path, grace_s=20.0)
    try:
        req = sim_request(nats_server.url, "local-args", LOCAL_CLUSTER.name,
                          engine_args={"max_model_len": "512"})
        await p.launch(req)
        ready = await p.wait_ready(req.replica_id, timeout=30.0)
        assert ready["replicaId"] == "local-args"
        rec = await wait_for(replicas_kv, req.replica_id, is_ready)
        assert rec is not None and rec.max_model_len == 512
    finally:
        await p.close()


async def test_a_replica_that_cannot_start_reports_its_exit_code_and_log(
        tmp_path: Path, nats_server: NatsServer) -> None:
    p = LocalProvider(tmp_path)
    await p.launch(sim_request(nats_server.url, "local-bad", LOCAL_CLUSTER.name,
                               engine_args={"max_model_len": "0"}))
    with pytest.raises(ReplicaExited) as e:
        await p.wait_ready("local-bad", timeout=30.0)
    assert e.value.returncode not in (None, 0)
    assert "max" in e.value.log_tail.lower()
    await p.close()


async def test_unknown_cluster_is_refused_without_starting_anything(
        tmp_path: Path, nats_server: NatsServer) -> None:
    p = LocalProvider(tmp_path)
    with pytest.raises(UnknownCluster) as e:
        await p.launch(sim_request(nats_server.url, "nowhere", "aws/us-east-1/x/cpu"))
    assert e.value.scope is Scope.CLUSTER
    assert p.running() == []


async def test_a_new_provider_finds_and_stops_replicas_a_previous_one_started(
        tmp_path: Path, nats_server: NatsServer, replicas_kv) -> None:
    first = LocalProvider(tmp_path, grace_s=20.0)
    second = LocalProvider(tmp_path, grace_s=20.0)
    try:
        await first.launch(sim_request(nats_server.url, "local-adopt", LOCAL_CLUSTER.name))
        await wait_for(replicas_kv, "local-adopt", is_ready)
        found = await second.list_owned(OWNER)
        assert [h.replica_id for h in found] == ["local-adopt"]
        assert await second.list_owned("someone-else") == []
        await second.stop(found[0].replica_id)
        await wait_for(replicas_kv, "local-adopt", is_gone, timeout=5.0)
        for _ in range(100):  # the record goes first; the process exits right after
            if first.returncode("local-adopt") is not None:
                break
            await asyncio.sleep(0.1)
        assert first.returncode("local-adopt") == 0, "drained and exited cleanly"
        assert await LocalProvider(tmp_path).list_owned(OWNER) == []
    finally:
        await first.close()
        await second.close()
