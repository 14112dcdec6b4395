"""Generate's coalescing with the real vLLM CPU engine and the tiny model behind a real gRPC
server: a client that lags gets exactly the tokens and text of one that keeps up, in fewer
messages; the request phases, engine_add included, reach /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

pytest.importorskip("vllm")

from prometheus_client import REGISTRY

from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from basalt_tools.vllm_cpu import CPU_SETTINGS
from services.runtime.engines.vllm import VllmConfig, VllmEngine
from services.runtime.publisher import KvEventPublisher, LoadReporter
from services.runtime.server import RuntimeServicer

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.timeout(240)]

REPLICA = "coalesce-vllm"
LABELS = {"model": "tiny", "replica": REPLICA}
SLOW_CLIENT = [("grpc.http2.lookahead_bytes", 256), ("grpc.http2.bdp_probe", 0)]


@dataclass
class Served:
    engine: VllmEngine
    address: str


@pytest.fixture(scope="module")
async def served(tiny_model: Path, nats_server) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    import nats

    nc = await nats.connect(nats_server.url)
    engine = VllmEngine(VllmConfig(model=str(tiny_model), served_model_name="tiny",
                                   max_num_seqs=4, kv_cache_bytes=8 * 2**20,
                                   engine_settings=dict(CPU_SETTINGS)))
    await engine.start()
    servicer = RuntimeServicer(engine, "tiny", REPLICA, KvEventPublisher(nc, REPLICA, "e1"),
                               LoadReporter(nc, REPLICA, "d1", engine, 60.0, "tiny"),
                               events_pb2.ReplicaRecord, on_lora_change=lambda: None)
    server = grpc.aio.server()
    runtime_pb2_grpc.add_RuntimeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Served(engine, f"127.0.0.1:{port}")
    finally:
        await server.stop(grace=None)
        await engine.shutdown()
        await nc.close()


def _request(rid: str, n: int) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        request_id=rid, prompt_token_ids=[(i * 37) % 900 + 20 for i in range(24)],
        sampling=runtime_pb2.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True))


async def test_a_lagging_client_gets_the_same_tokens_and_text(served: Served) -> None:
    n = 200
    async with grpc.aio.insecure_channel(served.address) as ch:
        fast = [r async for r in runtime_pb2_grpc.RuntimeStub(ch).Generate(_request("fast", n))]
    async with grpc.aio.insecure_channel(served.address, options=SLOW_CLIENT) as ch:
        call = runtime_pb2_grpc.RuntimeStub(ch).Generate(_request("slow", n))
        slow = [await call.read()]
        await asyncio.sleep(0.5)  # stop reading: the window fills, vLLM runs ahead
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 60
        while served.engine.stats().num_running and loop.time() < deadline:
            await asyncio.sleep(0.05)  # until vLLM has made every token
        while (msg := await call.read()) is not grpc.aio.EOF:
            slow.append(msg)

    def tokens(msgs: list[runtime_pb2.GenerateResponse]) -> list[int]:
        return [t for m in msgs for t in m.token_ids]

    assert len(tokens(fast)) == n
    assert tokens(slow) == tokens(fast)
    assert "".join(m.text for m in slow) == "".join(m.text for m in fast)
    assert "".join(m.text for m in fast)  # the tiny model's text is not empty
    assert slow[-1].finish_reason == fast[-1].finish_reason == runtime_pb2.FINISH_REASON_LENGTH
    assert slow[-1].usage.completion_tokens == fast[-1].usage.completion_tokens == n
    assert len(slow) < len(fast) // 2, f"slow: {len(slow)} messages, fast: {len(fast)}"


async def test_request_phases_reach_the_metrics(served: Served) -> None:
    name = "basalt_runtime_request_phase_seconds_count"

    def counts() -> dict[str, float]:
        return {p: REGISTRY.get_sample_value(name, LABELS | {"phase": p}) or 0.0
                for p in ("receive", "engine_add", "first_token", "send")}

    before = counts()
    async with grpc.aio.insecure_channel(served.address) as ch:
        msgs = [r async for r in runtime_pb2_grpc.RuntimeStub(ch).Generate(_request("ph", 4))]
    after = counts()
    assert {p: after[p] - before[p] for p in after} == {
        "receive": 1, "engine_add": 1, "first_token": 1, "send": len(msgs)}
