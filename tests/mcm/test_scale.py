"""Scale commands through a real JetStream stream: applied after a consumer (re)starts,
once per command id, never letting an older command override a newer one, and retried when
the write fails."""

from __future__ import annotations

import asyncio
import time

import pytest
from nats.aio.client import Client

from basalt import subjects
from basalt.pb import deploy_pb2
from basalt.scalestream import publish_scale
from services.mcm.core.scaling import ScaleVerdict, decide, settled
from services.mcm.scale import ScaleConsumer
from services.mcm.store import Store
from tests.mcm_process import eventually, sim_deployment

pytestmark = pytest.mark.integration


def _cmd(cid: str, ts: float, replicas: int = 1) -> deploy_pb2.ScaleCommand:
    return deploy_pb2.ScaleCommand(command_id=cid, deployment_id="d", replicas=replicas, ts=ts)


def test_a_command_from_the_future_is_refused_whatever_came_before() -> None:
    assert decide(_cmd("a", 1000.0 + 3600), None, now=1000.0) is ScaleVerdict.FUTURE
    assert decide(_cmd("a", 1000.0 + 30), None, now=1000.0) is None, "small skew is fine"
    last = _cmd("b", 10.0)
    assert decide(_cmd("a", 5000.0), last, now=1000.0) is ScaleVerdict.FUTURE


async def test_a_future_command_is_not_applied_and_later_commands_still_are(
        client: Client, store: Store) -> None:
    await store.create(sim_deployment("future", 1))
    running = Running(await ScaleConsumer.open(client, store))
    try:
        await publish_scale(client, "future", 5, "cli", ts=time.time() + 10 * 365 * 86400)
        await publish_scale(client, "future", 3, "cli")
        await _until_desired(store, "future", 3)
    finally:
        await running.stop()


def test_decide_skips_the_same_command_and_older_ones_and_applies_newer_ones() -> None:
    last = _cmd("b", 10.0)
    assert decide(_cmd("a", 1.0), None) is None
    assert decide(_cmd("b", 10.0), last) is ScaleVerdict.DUPLICATE
    assert decide(_cmd("b", 99.0), last) is ScaleVerdict.DUPLICATE, "same id, even re-stamped"
    assert decide(_cmd("a", 9.0), last) is ScaleVerdict.STALE
    assert decide(_cmd("a", 10.0), last) is ScaleVerdict.STALE, "equal ts: ids break the tie"
    assert decide(_cmd("c", 10.0), last) is None
    assert decide(_cmd("a", 11.0), last) is None


@pytest.fixture
async def store(client: Client) -> Store:
    return await Store.open(client)


class Running:
    """A consumer running in the background, as mcm runs it."""

    def __init__(self, consumer: ScaleConsumer) -> None:
        self.consumer = consumer
        self.task = asyncio.create_task(consumer.run())

    async def stop(self) -> None:
        self.consumer.request_stop()
        await self.task


async def _desired(store: Store, dep: str) -> int:
    found = await store.get(dep)
    assert found is not None
    return found.record.desired_replicas


async def _until_desired(store: Store, dep: str, n: int, timeout: float = 10.0) -> None:
    async def probe() -> bool:
        return await _desired(store, dep) == n
    await eventually(probe, timeout, f"{dep} desired_replicas == {n}")


async def test_a_command_published_while_no_consumer_runs_is_applied_once_one_starts(
        client: Client, store: Store) -> None:
    await store.create(sim_deployment("while-down", 1))
    first = Running(await ScaleConsumer.open(client, store))
    await publish_scale(client, "while-down", 2, "cli")
    await _until_desired(store, "while-down", 2)
    await first.stop()  # mcm goes down

    await publish_scale(client, "while-down", 4, "autoscaler")
    assert await _desired(store, "while-down") == 2
    again = Running(await ScaleConsumer.open(client, store))  # mcm comes back
    try:
        await _until_desired(store, "while-down", 4)
    finally:
        await again.stop()


async def test_a_redelivered_command_applies_once_and_an_older_one_never_overrides(
        client: Client, store: Store) -> None:
    await store.create(sim_deployment("dedup", 1))
    await store.create(sim_deployment("dedup-sentinel", 1))
    running = Running(await ScaleConsumer.open(client, store))
    try:
        cmd = await publish_scale(client, "dedup", 3, "cli", ts=100.0)
        await _until_desired(store, "dedup", 3)
        # Someone sets 5 through the API; then the same command comes again (a redelivery
        # past JetStream's duplicate window), then an older one that was delayed.
        found = await store.get("dedup")
        assert found is not None
        found.record.desired_replicas = 5
        await store.update(found.record, found.revision)
        js = client.jetstream()
        await js.publish(subjects.scale("dedup"), cmd.SerializeToString())
        await publish_scale(client, "dedup", 1, "autoscaler", ts=50.0)
        # Commands are consumed in stream order: once this one is applied, those were seen.
        await publish_scale(client, "dedup-sentinel", 2, "cli")
        await _until_desired(store, "dedup-sentinel", 2)
        assert await _desired(store, "dedup") == 5
        # A newer command still applies.
        await publish_scale(client, "dedup", 2, "cli", ts=200.0)
        await _until_desired(store, "dedup", 2)
    finally:
        await running.stop()


async def test_publishing_the_same_command_id_twice_applies_it_once(
        client: Client, store: Store) -> None:
    await store.create(sim_deployment("twice", 1))
    await store.create(sim_deployment("twice-sentinel", 1))
    running = Running(await ScaleConsumer.open(client, store))
    try:
        await publish_scale(client, "twice", 3, "cli", command_id="twice-1")
        await _until_desired(store, "twice", 3)
        found = await store.get("twice")
        assert found is not None
        found.record.desired_replicas = 1
        await store.update(found.record, found.revision)
        await publish_scale(client, "twice", 3, "cli", command_id="twice-1")  # a retried publish
        await publish_scale(client, "twice-sentinel", 2, "cli")
        await _until_desired(store, "twice-sentinel", 2)
        assert await _desired(store, "twice") == 1
    finally:
        await running.stop()


class FailingOnce(Store):
    """A store whose first deployment write fails, as when NATS drops mid-write."""

    failures = 0

    async def update(self, record: deploy_pb2.DeploymentRecord, revision: int) -> int:
        if self.failures == 0:
            self.failures += 1
            raise ConnectionError("nats: connection closed")
        return await super().update(record, revision)


async def test_a_command_whose_write_fails_is_redelivered_and_applied(
        client: Client) -> None:
    plain = await Store.open(client)
    flaky = FailingOnce(plain.deployments, plain.environments)
    await plain.create(sim_deployment("flaky", 1))
    running = Running(await ScaleConsumer.open(client, flaky, retry_delay_s=0.2))
    try:
        await publish_scale(client, "flaky", 3, "cli")
        await _until_desired(plain, "flaky", 3)
        assert flaky.failures == 1
    finally:
        await running.stop()


async def test_commands_for_unknown_deployments_do_not_block_the_others(
        client: Client, store: Store) -> None:
    await store.create(sim_deployment("known", 1))
    running = Running(await ScaleConsumer.open(client, store))
    try:
        await publish_scale(client, "no-such-deployment", 3, "cli")
        await publish_scale(client, "known", 2, "cli")
        await _until_desired(store, "known", 2)
    finally:
        await running.stop()


async def test_publish_scale_rejects_what_cannot_be_a_command(client: Client) -> None:
    with pytest.raises(ValueError, match="subject token"):
        await publish_scale(client, "a.b", 1, "cli")
    with pytest.raises(ValueError, match="0..1000"):
        await publish_scale(client, "ok", 1001, "cli")


def test_settled_once_the_command_or_a_newer_one_is_the_last_applied() -> None:
    cmd = _cmd("b", 10.0)
    assert not settled(cmd, None)
    assert not settled(cmd, _cmd("a", 9.0))
    assert settled(cmd, cmd) and settled(cmd, _cmd("a", 11.0)) and settled(cmd, _cmd("c", 10.0))
