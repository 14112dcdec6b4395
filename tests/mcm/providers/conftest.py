"""Fixtures for provider tests: the replicas KV bucket and waiting on replica records."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from basalt import bus
from basalt.ids import ReplicaId
from basalt.pb import events_pb2
from services.mcm.core.inventory import DeploymentId
from services.mcm.core.provider import LaunchRequest

OWNER = "mcm-test"


@pytest.fixture
async def replicas_kv(nc) -> KeyValue:
    return await bus.replicas_bucket(nc)


async def record_of(kv: KeyValue, replica_id: str) -> events_pb2.ReplicaRecord | None:
    try:
        entry = await kv.get(replica_id)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    return events_pb2.ReplicaRecord.FromString(entry.value)


async def wait_for(kv: KeyValue, replica_id: str,
                   pred: Callable[[events_pb2.ReplicaRecord | None], bool],
                   timeout: float = 30.0) -> events_pb2.ReplicaRecord | None:
    """Poll the replica's record until `pred` holds; fails the test after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        rec = await record_of(kv, replica_id)
        if pred(rec):
            return rec
        if time.monotonic() > deadline:
            pytest.fail(f"record of {replica_id} never matched; last: {rec}")
        await asyncio.sleep(0.1)


def is_ready(rec: events_pb2.ReplicaRecord | None) -> bool:
    return rec is not None and rec.state == events_pb2.REPLICA_STATE_READY


def is_gone(rec: events_pb2.ReplicaRecord | None) -> bool:
    return rec is None


def sim_request(nats_url: str, replica_id: str, cluster: str, owner: str = OWNER,
                engine_args: dict[str, str] | None = None) -> LaunchRequest:
    """A fast sim-engine replica (the simulator engine starts in about two seconds)."""
    return LaunchRequest(
        replica_id=ReplicaId(replica_id), deployment_id=DeploymentId("dep-a"), owner=owner,
        engine="sim", model_path="", model_name="sim-model", nats_url=nats_url,
        cluster=cluster,
        engine_args={"heartbeat_interval": "0.5", "drain_timeout": "2", **(engine_args or {})},
    )
