"""Hypothesis over every NATS message decoder and consumer: arbitrary bytes, valid encodings
of messages with arbitrary values, and damaged encodings never crash a consumer (it logs and
drops bad input) nor leave state that makes the next reader raise.

Consumers, each called for real (a NATS message here is a tiny object with `.subject` and
`.data`, as nats-py hands it to a callback): the router's watcher callbacks (KV events, load
reports, replica / deployment / environment records) and its KV watch loop over a real
bucket; the mcm's scale consumer on the real JetStream stream; the reconciler's reads of the
replica and deployment buckets and its pure rules over what they decode; the API-key
verifier over a real bucket; the KV-event codec (basalt/kvevents.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from google.protobuf.message import DecodeError
from hypothesis import given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from basalt import apikeys, bus, subjects
from basalt.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventBatchData,
    batch_from_proto,
    batch_to_proto,
)
from basalt.pb import deploy_pb2, events_pb2
from basalt.scalestream import publish_scale
from services.mcm.api import create_app as create_mcm_app
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.inventory import Cluster, ClusterName, DeploymentId
from services.mcm.core.liveness import Liveness
from services.mcm.core.reconcile import PlanContext, observed_from_record, plan
from services.mcm.core.scaling import settled
from services.mcm.reconciler import read_replicas, target_of
from services.mcm.scale import ScaleConsumer, last_applied
from services.mcm.store import Store
from services.router.core.deployments import DeploymentTable
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex
from services.router.dispatch import Channels
from services.router.watchers import StateWatcher
from tests.property.support import FUZZ, messages, wire

REPLICA = "r-known"  # registered in the watcher's fleet: its messages reach the index
DEPLOYMENT = "dep-known"
ids = st.one_of(st.just(REPLICA), st.text(max_size=12))


@dataclass(slots=True)
class Msg:
    """A core-NATS message as a subscription callback gets it."""

    subject: str
    data: bytes


# -- the router's watcher --------------------------------------------------------------------


def _record(replica_id: str = REPLICA) -> events_pb2.ReplicaRecord:
    # No gRPC address: a dump the watcher asks for ends at once (nothing to call).
    return events_pb2.ReplicaRecord(replica_id=replica_id, deployment=DEPLOYMENT,
                                    state=events_pb2.REPLICA_STATE_READY, kv_block_size=16,
                                    kv_blocks_total=1024, heartbeat_ts=time.time())


@pytest.fixture(scope="module")
async def watcher(module_nc: Client) -> AsyncIterator[StateWatcher]:
    """The router's StateWatcher on the module's NATS (its KV watches running), with one
    replica registered."""
    w = StateWatcher(module_nc, Fleet(ttl_s=subjects.REPLICAS_TTL_S), PrefixIndex(),
                     DeploymentTable(), Channels(), changed=lambda: None)
    await w.start()
    w._on_replica(REPLICA, _record().SerializeToString())
    yield w
    await w.stop()
    await w.channels.close()


def _still_usable(w: StateWatcher) -> None:
    """What the dispatcher and the front doors read from the watcher's state must not raise."""
    now = time.monotonic()
    for dep in {DEPLOYMENT, *(w.fleet.deployment_of(r) or "" for r in w.fleet.all_ids())}:
        w.fleet.candidates(dep, now)
    w.fleet.expire(now)
    w.index.match([])
    w.index.stats()
    w.table.model_names()
    w.table.resolve("anything")
    if REPLICA not in w.fleet:  # a garbage record may have replaced it: register it again
        w._on_replica(REPLICA, _record().SerializeToString())


def _subject(kind: str) -> st.SearchStrategy[Any]:
    """Mostly the subject the message's replica publishes on, sometimes another one."""
    own = subjects.kv_events if kind == "kv" else subjects.load
    return st.one_of(st.just(own), st.just(lambda _rid: f"basalt.{kind}.other"))


def _replica_of(data: bytes, cls: type) -> str:
    try:
        return str(cls.FromString(data).replica_id)
    except DecodeError:
        return REPLICA


@pytest.mark.integration
@FUZZ
@given(data=wire(events_pb2.KvEventBatch, replica_id=ids), subject=_subject("kv"))
async def test_kv_event_batches_never_crash_the_watcher(watcher: StateWatcher, data: bytes,
                                                        subject: Any) -> None:
    await watcher._on_kv(Msg(subject(_replica_of(data, events_pb2.KvEventBatch)), data))
    _still_usable(watcher)


@pytest.mark.integration
@FUZZ
@given(data=wire(events_pb2.LoadReport, replica_id=ids), subject=_subject("load"))
async def test_load_reports_never_crash_the_watcher(watcher: StateWatcher, data: bytes,
                                                    subject: Any) -> None:
    await watcher._on_load(Msg(subject(_replica_of(data, events_pb2.LoadReport)), data))
    _still_usable(watcher)


def _kv_handler(w: StateWatcher, bucket: str) -> Any:
    return {"replicas": w._on_replica, "deployments": w._on_deployment,
            "environments": w._on_environment}[bucket]


RECORDS = {"replicas": events_pb2.ReplicaRecord, "deployments": deploy_pb2.DeploymentRecord,
           "environments": deploy_pb2.EnvironmentRecord}


@pytest.mark.integration
@pytest.mark.parametrize("bucket", list(RECORDS))
@FUZZ
@given(data=st.data())
async def test_kv_records_never_leave_the_watcher_broken(watcher: StateWatcher, bucket: str,
                                                         data: st.DataObject) -> None:
    """A KV entry's handler may raise only DecodeError (the watch loop logs and drops the
    entry); a record that decodes is applied, whatever its values, and leaves state every
    reader can read."""
    key = data.draw(st.one_of(st.just(REPLICA), st.text(min_size=1, max_size=12)), label="key")
    value = data.draw(st.one_of(st.none(), wire(RECORDS[bucket])), label="value")
    try:
        _kv_handler(watcher, bucket)(key, value)
    except DecodeError:
        pass  # undecodable: `_watch` logs it as a bad entry and goes on
    _still_usable(watcher)


@pytest.mark.integration
async def test_a_replica_record_with_an_unknown_state_is_applied(watcher: StateWatcher) -> None:
    rec = _record("r-future")
    rec.state = 9  # not in ReplicaState
    watcher._on_replica(rec.replica_id, rec.SerializeToString())


async def _until(check: Any, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not applied in time"
        await asyncio.sleep(0.01)


@pytest.mark.integration
@pytest.mark.parametrize("bucket", list(RECORDS))
@FUZZ
@given(garbage=st.binary(max_size=120), n=st.integers(0, 10**9))
async def test_the_kv_watch_goes_on_after_garbage(watcher: StateWatcher, module_nc: Client,
                                                  bucket: str, garbage: bytes, n: int) -> None:
    """End to end over the real bucket: after an entry of garbage, the next record is applied."""
    name = {"replicas": subjects.REPLICAS_BUCKET, "deployments": subjects.DEPLOYMENTS_BUCKET,
            "environments": subjects.ENVIRONMENTS_BUCKET}[bucket]
    kv = await bus.kv_bucket(module_nc, name)
    await kv.put("junk", garbage)
    probe = f"probe-{n}"
    if bucket == "replicas":
        await kv.put(probe, _record(probe).SerializeToString())
        await _until(lambda: probe in watcher.fleet)
    elif bucket == "deployments":
        await kv.put(probe, deploy_pb2.DeploymentRecord(id=probe, model="m").SerializeToString())
        await _until(lambda: watcher.table.get(probe) is not None)
    else:
        await kv.put(f"m.{probe}", deploy_pb2.EnvironmentRecord(
            model="m", name=probe, deployment_id="d").SerializeToString())
        await _until(lambda: ("m", probe) in watcher.table._environments)
    await kv.delete("junk")


# -- the mcm's scale consumer ----------------------------------------------------------------


@dataclass(slots=True)
class Scaling:
    nc: Client
    store: Store
    consumer: ScaleConsumer


@pytest.fixture(scope="module")
async def scaling(module_nc: Client) -> AsyncIterator[Scaling]:
    store = await Store.open(module_nc)
    rec = deploy_pb2.DeploymentRecord(id="scale-dep", model="scale-model", desired_replicas=1,
                                      status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE)
    await store.deployments.put(rec.id, rec.SerializeToString())
    consumer = await ScaleConsumer.open(module_nc, store, retry_delay_s=0.05)
    task = asyncio.create_task(consumer.run())
    js = module_nc.jetstream()
    deadline = time.monotonic() + 10.0
    while True:  # its durable consumer exists once `run` subscribed
        try:
            await js.consumer_info(subjects.SCALE_STREAM, "mcm")
            break
        except NotFoundError:
            assert time.monotonic() < deadline, "the scale consumer never subscribed"
            await asyncio.sleep(0.02)
    yield Scaling(module_nc, store, consumer)
    consumer.request_stop()
    await task


async def _consumer_idle(nc: Client, timeout: float = 3.0) -> None:
    """Every message delivered was acked or terminated: none pending, none to redeliver."""
    js = nc.jetstream()
    deadline = time.monotonic() + timeout
    while True:
        info = await js.consumer_info(subjects.SCALE_STREAM, "mcm")
        if not info.num_ack_pending and not info.num_pending:
            return
        assert time.monotonic() < deadline, (
            f"the scale consumer keeps {info.num_ack_pending} message(s) unacked "
            f"({info.num_redelivered} redelivered): a bad command is retried for ever")
        await asyncio.sleep(0.02)


# A decoded garbage command names the known deployment sometimes, any id otherwise.
_scale_ids = st.one_of(st.just("scale-dep"), st.text(max_size=12))




@pytest.mark.integration
@FUZZ
@given(garbage=wire(deploy_pb2.ScaleCommand, deployment_id=_scale_ids),
       replicas=st.integers(0, 5))
async def test_the_scale_consumer_drops_garbage_and_goes_on(scaling: Scaling, garbage: bytes,
                                                            replicas: int) -> None:
    """Garbage on the scale stream is acked or terminated (not retried for ever), and the
    next valid command is applied."""
    js = scaling.nc.jetstream()
    await js.publish(subjects.scale("junk"), garbage)
    cmd = await publish_scale(scaling.nc, "scale-dep", replicas, "property")
    deadline = time.monotonic() + 5.0
    while not settled(cmd, (await last_applied(scaling.consumer.applied, "scale-dep"))[0]):
        assert time.monotonic() < deadline, "the valid command after garbage was not applied"
        await asyncio.sleep(0.01)
    await _consumer_idle(scaling.nc)


# Last of the scale tests: its message stays on the stream, redelivered, until the module ends.
@pytest.mark.integration
@pytest.mark.parametrize("payload", [
    pytest.param(b"", id="empty"),  # decodes as a ScaleCommand with every field unset
    pytest.param(deploy_pb2.ScaleCommand(deployment_id="a b", replicas=1).SerializeToString(),
                 id="space")])
async def test_a_command_for_an_id_that_is_no_kv_key_is_dropped(scaling: Scaling,
                                                                payload: bytes) -> None:
    await scaling.nc.jetstream().publish(subjects.scale("junk"), payload)
    await _consumer_idle(scaling.nc, timeout=1.0)


# -- the reconciler's reads and rules --------------------------------------------------------


@pytest.mark.integration
@FUZZ
@given(garbage=wire(events_pb2.ReplicaRecord))
async def test_read_replicas_drops_an_unreadable_record(module_nc: Client, garbage: bytes) -> None:
    """The reconciler's read of basalt_replicas: an undecodable record is left out, the
    others are read."""
    kv = await bus.replicas_bucket(module_nc)
    await kv.put("good", _record("good").SerializeToString())
    await kv.put("junk", garbage)
    try:
        found = await read_replicas(kv)
    finally:
        await kv.delete("junk")
    assert "good" in found


@pytest.mark.integration
@FUZZ
@given(garbage=wire(deploy_pb2.DeploymentRecord))
async def test_store_list_drops_an_unreadable_record(scaling: Scaling, garbage: bytes) -> None:
    store = scaling.store
    await store.deployments.put("junk", garbage)
    try:
        listed = await store.list()
    finally:
        await store.deployments.delete("junk")
    assert "scale-dep" in {r.id for r in listed}


@pytest.mark.integration
async def test_the_api_lists_models_with_an_unreadable_replica_record(scaling: Scaling) -> None:
    kv = await bus.replicas_bucket(scaling.nc)
    await kv.put("junk", b"\x07")
    app = create_mcm_app(scaling.store, nc=scaling.nc)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(
                app=app, raise_app_exceptions=False), base_url="http://mcm") as client:
            r = await client.get("/v1/models")
    finally:
        await kv.delete("junk")
    assert r.status_code == 200, r.text


OWNER = "owner-1"
CLUSTERS = [Cluster(ClusterName("c1"), "sim", "us-east", "us-east-a", "", 8, 1.0),
            Cluster(ClusterName("c2"), "sim", "eu-west", "eu-west-a", "H100", 4, 3.0, up=False)]
_owned = {"owner": st.sampled_from([OWNER, "", "someone-else"]),
          "cluster": st.sampled_from(["c1", "c2", "", "gone"]),
          "deployment": st.sampled_from(["d1", "d2", ""])}


@FUZZ
@given(records=st.dictionaries(st.text(max_size=8), messages(events_pb2.ReplicaRecord,
                                                             fields=_owned), max_size=5),
       deployments=st.lists(messages(deploy_pb2.DeploymentRecord,
                                     fields={"id": st.sampled_from(["d1", "d2", "d3"])}),
                            max_size=3),
       now=st.floats(0, 2e9))
def test_the_reconcile_rules_take_any_decoded_record(
    records: dict[str, events_pb2.ReplicaRecord],
    deployments: list[deploy_pb2.DeploymentRecord], now: float,
) -> None:
    """What the reconciler decodes goes through its pure rules (views, liveness, the plan)
    without raising, whatever the values: unknown states, NaN times, huge counts."""
    for rec in records.values():
        observed_from_record(rec, now)
    seen = Liveness(OWNER, 6.0).observe(records, [], [], {}, set(), set(), CLUSTERS, now)
    targets = {DeploymentId(r.id): target_of(r) for r in deployments}
    plan(targets, seen.replicas, seen.pending, PlanContext(OWNER, CLUSTERS, Blocklist(), now))


# -- API keys --------------------------------------------------------------------------------


KEY_ID = "0123456789ab"


@pytest.mark.integration
@FUZZ
@given(value=wire(deploy_pb2.ApiKeyRecord), secret=st.text(max_size=20),
       scope=st.sampled_from([apikeys.INFERENCE, apikeys.MANAGEMENT]))
async def test_an_unreadable_key_record_verifies_nothing(module_nc: Client, value: bytes,
                                                         secret: str, scope: int) -> None:
    """Whatever the record under a key id holds, verifying a key of that id never raises and
    never admits a key whose hash is not the record's."""
    bucket = await bus.kv_bucket(module_nc, subjects.API_KEYS_BUCKET)
    await bucket.put(KEY_ID, value)
    verifier = apikeys.KeyVerifier(bucket, cache_s=0.0)
    key = f"{apikeys.PREFIX}{KEY_ID}.{secret}"
    rec = await verifier.verify(key, scope)
    assert rec is None or rec.sha256 == apikeys.digest(key)
    await apikeys.list_keys(module_nc)


def _non_ascii_hash(value: bytes) -> bool:
    try:
        return not deploy_pb2.ApiKeyRecord.FromString(value).sha256.isascii()
    except DecodeError:
        return False


@pytest.mark.integration
async def test_a_key_record_with_a_non_ascii_hash_verifies_nothing(module_nc: Client) -> None:
    bucket = await bus.kv_bucket(module_nc, subjects.API_KEYS_BUCKET)
    record = deploy_pb2.ApiKeyRecord(key_id=KEY_ID, sha256="é")
    await bucket.put(KEY_ID, record.SerializeToString())
    verifier = apikeys.KeyVerifier(bucket, cache_s=0.0)
    assert await verifier.verify(f"{apikeys.PREFIX}{KEY_ID}.secret") is None


@pytest.mark.integration
@FUZZ
@given(header=st.one_of(st.none(), st.text(max_size=80)))
async def test_any_authorization_header_is_read_without_raising(module_nc: Client,
                                                                header: str | None) -> None:
    bucket = await bus.kv_bucket(module_nc, subjects.API_KEYS_BUCKET)
    key = apikeys.key_from_header(header)
    assert await apikeys.KeyVerifier(bucket).verify(key) is None


# -- the KV-event codec (pure) ---------------------------------------------------------------


@FUZZ
@given(data=wire(events_pb2.KvEventBatch))
def test_kv_event_batches_decode_cleanly_or_not_at_all(data: bytes) -> None:
    """From any bytes: DecodeError, ValueError (an event with no kind), or a batch of our
    event types that encodes back to the same batch."""
    try:
        batch = batch_from_proto(events_pb2.KvEventBatch.FromString(data))
    except (DecodeError, ValueError):
        return
    assert isinstance(batch, KvEventBatchData)
    assert all(isinstance(e, BlockStored | BlockRemoved | AllBlocksCleared) for e in batch.events)
    again = batch_from_proto(events_pb2.KvEventBatch.FromString(
        batch_to_proto(batch).SerializeToString()))
    assert again.events == batch.events and again.seq == batch.seq
    assert again.replica_id == batch.replica_id and again.epoch == batch.epoch
