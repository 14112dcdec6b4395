"""The runtime process end to end with the simulator engine: real gRPC, real NATS."""

from __future__ import annotations

import asyncio
import time

import grpc
import nats.errors
import nats.js.errors
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from basalt import bus, subjects
from basalt.kvevents import BlockRemoved, BlockStored, batch_from_proto
from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from basalt_tools.natsserver import NatsServer
from tests.runtime_process import RuntimeProcess

pytestmark = pytest.mark.integration
BLOCK = 16


@pytest.fixture(scope="module")
def replica(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory):
    proc = RuntimeProcess(
        nats_server.url, tmp_path_factory.mktemp("rt"), replica_id="sim-a",
        extra=["--deployment", "d1", "--region", "us-east", "--sim-time-scale", "0.2",
               "--block-size", str(BLOCK), "--max-model-len", "4096",
               "--load-report-interval", "0.2", "--heartbeat-interval", "0.5",
               "--lora-root", "/nowhere"],
    ).start()
    yield proc
    proc.kill()


def _request(prompt: list[int], max_tokens: int = 8, **kw) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        prompt_token_ids=prompt,
        sampling=runtime_pb2.SamplingParams(max_tokens=max_tokens, **kw.pop("sampling", {})),
        **kw,
    )


async def _generate(address: str, req: runtime_pb2.GenerateRequest) -> list[runtime_pb2.GenerateResponse]:
    async with grpc.aio.insecure_channel(address) as ch:
        return [r async for r in runtime_pb2_grpc.RuntimeStub(ch).Generate(req)]


def _prompt(seed: int, n: int) -> list[int]:
    return [(seed * 31 + i * 7) % 240 + 10 for i in range(n)]


async def test_generate_streams_tokens_and_usage(replica: RuntimeProcess) -> None:
    out = await _generate(replica.address, _request(_prompt(1, 40), max_tokens=12))
    tokens = [t for r in out for t in r.token_ids]
    assert len(tokens) == 12
    assert out[-1].finish_reason == runtime_pb2.FINISH_REASON_LENGTH
    assert out[-1].usage.prompt_tokens == 40
    assert out[-1].usage.completion_tokens == 12
    assert len(out) > 1, "tokens should stream, not arrive in one message"


async def test_repeated_prefix_is_served_from_cache(replica: RuntimeProcess) -> None:
    prefix = _prompt(2, 5 * BLOCK)
    first = await _generate(replica.address, _request(prefix + [11, 12, 13]))
    second = await _generate(replica.address, _request(prefix + [21, 22, 23]))
    assert first[-1].usage.cached_prompt_tokens == 0
    assert second[-1].usage.cached_prompt_tokens == 5 * BLOCK


async def test_kv_events_on_nats_match_the_prompt(replica: RuntimeProcess, nc) -> None:
    batches = []
    sub = await nc.subscribe(subjects.kv_events("sim-a"))
    prompt = _prompt(3, 3 * BLOCK + 5)
    await _generate(replica.address, _request(prompt, max_tokens=2))
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            msg = await sub.next_msg(timeout=0.5)
        except nats.errors.TimeoutError:
            if batches:
                break
            continue
        batches.append(batch_from_proto(events_pb2.KvEventBatch.FromString(msg.data)))
    await sub.unsubscribe()
    stored = [e for b in batches for e in b.events if isinstance(e, BlockStored)]
    assert stored, "no BlockStored event seen on NATS"
    tokens = [t for e in stored for t in e.token_ids]
    assert tokens[: 3 * BLOCK] == prompt[: 3 * BLOCK]
    assert all(e.block_size == BLOCK for e in stored)
    seqs = [b.seq for b in batches]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "seq must grow by one per batch"
    assert {b.replica_id for b in batches} == {"sim-a"}


async def test_dump_agrees_with_the_event_stream(replica: RuntimeProcess, nc) -> None:
    seen: dict[int, None] = {}
    sub = await nc.subscribe(subjects.kv_events("sim-a"))
    await _generate(replica.address, _request(_prompt(4, 4 * BLOCK), max_tokens=2))
    await asyncio.sleep(0.5)
    last_seq = 0
    while True:
        try:
            msg = await sub.next_msg(timeout=0.2)
        except nats.errors.TimeoutError:
            break
        batch = batch_from_proto(events_pb2.KvEventBatch.FromString(msg.data))
        last_seq = batch.seq
        for e in batch.events:
            if isinstance(e, BlockStored):
                seen.update(dict.fromkeys(e.block_hashes))
            elif isinstance(e, BlockRemoved):
                for h in e.block_hashes:
                    seen.pop(h, None)
    await sub.unsubscribe()
    async with replica.channel() as ch:
        dump = await runtime_pb2_grpc.RuntimeStub(ch).DumpKvState(runtime_pb2.DumpKvStateRequest())
    assert dump.seq == last_seq
    dumped = {h for b in dump.blocks for h in b.block_hashes}
    assert set(seen) <= dumped


async def test_replica_record_is_in_the_kv_bucket(replica: RuntimeProcess, nc) -> None:
    bucket = await bus.replicas_bucket(nc)
    rec = events_pb2.ReplicaRecord.FromString((await bucket.get("sim-a")).value)
    assert rec.state == events_pb2.REPLICA_STATE_READY
    assert rec.grpc_address == replica.address
    assert (rec.deployment, rec.engine, rec.region, rec.kv_block_size) == ("d1", "sim", "us-east", BLOCK)
    assert rec.kv_blocks_total > 0
    assert rec.epoch


async def test_health_and_reflection(replica: RuntimeProcess) -> None:
    async with replica.channel() as ch:
        resp = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        names = {s.name async for r in stub.ServerReflectionInfo(iter([req]))
                 for s in r.list_services_response.service}
    assert {"basalt.v1.Runtime", "inference.GRPCInferenceService", "grpc.health.v1.Health"} <= names


@pytest.mark.parametrize(
    ("req", "needle"),
    [
        (_request([]), "empty"),
        (_request(_prompt(5, 10), max_tokens=5000), "context length"),
        (_request(_prompt(5, 10), sampling={"temperature": -1.0}), "temperature"),
        (_request(_prompt(5, 10), sampling={"top_p": 1.5}), "top_p"),
        (_request(_prompt(5, 10), lora_name="nope"), "nope"),
        (_request([10, 10**9]), "vocab"),
    ],
)
async def test_bad_input_is_invalid_argument_and_replica_keeps_serving(
    replica: RuntimeProcess, req: runtime_pb2.GenerateRequest, needle: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await _generate(replica.address, req)
    assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert needle in err.value.details()
    ok = await _generate(replica.address, _request(_prompt(6, 8), max_tokens=3))
    assert ok[-1].usage.completion_tokens == 3


async def _latest_load(nc, replica_id: str, pred, timeout: float = 10.0) -> events_pb2.LoadReport:
    sub = await nc.subscribe(subjects.load(replica_id))
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            msg = await sub.next_msg(timeout=timeout)
            report = events_pb2.LoadReport.FromString(msg.data)
            if pred(report):
                return report
        raise AssertionError("no load report matched")
    finally:
        await sub.unsubscribe()


async def test_client_that_goes_away_frees_its_blocks(replica: RuntimeProcess, nc) -> None:
    async with replica.channel() as ch:
        call = runtime_pb2_grpc.RuntimeStub(ch).Generate(_request(_prompt(7, 6 * BLOCK), max_tokens=3000))
        got = 0
        async for _ in call:
            got += 1
            if got == 3:
                break
        busy = await _latest_load(nc, "sim-a", lambda r: r.num_running == 1)
        assert busy.kv_blocks_active >= 6
        call.cancel()
    idle = await _latest_load(nc, "sim-a", lambda r: r.num_running == 0 and r.kv_blocks_active == 0)
    assert idle.num_waiting == 0


async def test_lora_load_and_unload_show_in_the_record(replica: RuntimeProcess, nc) -> None:
    bucket = await bus.replicas_bucket(nc)
    async with replica.channel() as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        await stub.LoadLora(runtime_pb2.LoadLoraRequest(lora_name="ad1", lora_path="/nowhere/sim"))
        await asyncio.sleep(0.3)
        rec = events_pb2.ReplicaRecord.FromString((await bucket.get("sim-a")).value)
        assert "ad1" in rec.lora_adapters
        out = [r async for r in stub.Generate(_request(_prompt(8, 20), lora_name="ad1"))]
        assert out[-1].usage.completion_tokens == 8
        await stub.UnloadLora(runtime_pb2.UnloadLoraRequest(lora_name="ad1"))
        await asyncio.sleep(0.3)
        rec = events_pb2.ReplicaRecord.FromString((await bucket.get("sim-a")).value)
        assert "ad1" not in rec.lora_adapters
        with pytest.raises(grpc.aio.AioRpcError) as err:
            [r async for r in stub.Generate(_request(_prompt(8, 20), lora_name="ad1"))]
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for path in ("/etc/evil", "/nowhere/../etc/evil"):  # outside --lora-root
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await stub.LoadLora(runtime_pb2.LoadLoraRequest(lora_name="x", lora_path=path))
            assert err.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "lora_path" in (err.value.details() or "")


async def test_sigterm_finishes_in_flight_work_then_deregisters(nats_server: NatsServer, tmp_path, nc) -> None:
    proc = RuntimeProcess(nats_server.url, tmp_path, replica_id="sim-drain",
                          extra=["--sim-time-scale", "1.0"]).start()
    try:
        async with proc.channel() as ch:
            call = runtime_pb2_grpc.RuntimeStub(ch).Generate(_request(_prompt(9, 32), max_tokens=150))
            first = await call.read()
            proc.proc.send_signal(15)
            rest = []
            while (msg := await call.read()) != grpc.aio.EOF:
                rest.append(msg)
            tokens = len(first.token_ids) + sum(len(r.token_ids) for r in rest)
            assert tokens == 150
            assert rest[-1].finish_reason == runtime_pb2.FINISH_REASON_LENGTH
        assert proc.proc.wait(timeout=30) == 0
        bucket = await bus.replicas_bucket(nc)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await bucket.get("sim-drain")
    finally:
        proc.kill()


async def test_record_of_a_dead_replica_expires(tmp_path) -> None:
    server = NatsServer(store_dir=tmp_path / "nats").start()
    try:
        nc = await bus.connect(server.url, name="t")
        bucket = await bus.kv_bucket(nc, subjects.REPLICAS_BUCKET, ttl_s=2.0)
        proc = RuntimeProcess(server.url, tmp_path, replica_id="sim-dies",
                              extra=["--heartbeat-interval", "0.5"]).start()
        await asyncio.sleep(1.5)
        assert (await bucket.get("sim-dies")).value, "record should be kept fresh by heartbeats"
        proc.kill()
        await asyncio.sleep(3.5)
        with pytest.raises(nats.js.errors.KeyNotFoundError):
            await bucket.get("sim-dies")
        await nc.close()
    finally:
        server.stop()


async def test_metrics_endpoint_reports_vllm_style_series(replica: RuntimeProcess, nc) -> None:
    await _generate(replica.address, _request(_prompt(10, 20), max_tokens=4))
    bucket = await bus.replicas_bucket(nc)
    rec = events_pb2.ReplicaRecord.FromString((await bucket.get("sim-a")).value)
    import httpx

    async with httpx.AsyncClient() as c:
        text = (await c.get(f"http://{rec.metrics_address}/metrics")).text
    assert 'basalt:time_to_first_token_seconds_count{model="sim-model",replica="sim-a"}' in text
    assert "basalt:kv_cache_usage_perc" in text and "basalt:generation_tokens_total" in text
