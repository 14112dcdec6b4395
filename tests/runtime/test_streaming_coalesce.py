"""Generate's streaming through a real gRPC server, sim engine and NATS: a client that keeps up
gets one message per engine step; one that lags gets the same tokens and text in fewer messages
(read directly from an engine that merges, or through the pump for one that does not); a client
gone aborts the sequence; the request phases reach /metrics."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass

import grpc
import pytest
from prometheus_client import REGISTRY

from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from services.runtime.core.engine import GenerateChunk, GenerateInput
from services.runtime.engines.sim.engine import SimConfig, SimEngine
from services.runtime.publisher import KvEventPublisher, LoadReporter
from services.runtime.server import RuntimeServicer

pytestmark = pytest.mark.integration

# The client's stream window kept small and fixed (no BDP growth): a client that stops reading
# fills it within a few hundred bytes, so the server's writes wait and the engine runs ahead.
SLOW_CLIENT = [("grpc.http2.lookahead_bytes", 256), ("grpc.http2.bdp_probe", 0)]


def _decode(ids: list[int]) -> str:
    return "".join(f"<{i}>" for i in ids)


class OneTokenChunks(SimEngine):
    """The sim, cut back to one chunk per token whatever the reader's pace (as TensorRT-LLM's
    per-step results come): the server must merge for it, through its pump."""

    merges_outputs = False

    async def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        async for chunk in super().generate(req):
            ids = chunk.token_ids
            for t in ids[:-1]:
                yield GenerateChunk([t], _decode([t]))
            yield GenerateChunk(ids[-1:], _decode(ids[-1:]), chunk.finish_reason, chunk.usage)


@dataclass
class Served:
    engine: SimEngine
    address: str
    labels: dict[str, str]


async def _serve(nc, time_scale: float, replica: str,  # type: ignore[no-untyped-def]
                 engine_class: type[SimEngine] = SimEngine) -> AsyncIterator[Served]:
    engine = engine_class(SimConfig(time_scale=time_scale, num_blocks=1024), decode=_decode)
    await engine.start()
    kv = KvEventPublisher(nc, replica, "e1")
    load = LoadReporter(nc, replica, "d1", engine, 60.0, "m")
    servicer = RuntimeServicer(engine, "m", replica, kv, load, events_pb2.ReplicaRecord,
                               on_lora_change=lambda: None)
    server = grpc.aio.server()
    runtime_pb2_grpc.add_RuntimeServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield Served(engine, f"127.0.0.1:{port}", {"model": "m", "replica": replica})
    finally:
        await server.stop(grace=None)
        await engine.shutdown()


@pytest.fixture
async def fast_engine(nc) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    async for s in _serve(nc, 0.01, "coalesce-fast"):  # steps of ~0.1 ms: the engine runs ahead
        yield s


@pytest.fixture(params=[SimEngine, OneTokenChunks], ids=["engine-merges", "pump-merges"])
async def either_engine(nc, request: pytest.FixtureRequest) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    async for s in _serve(nc, 0.01, f"coalesce-{request.param.__name__}", request.param):
        yield s


@pytest.fixture
async def slow_engine(nc) -> AsyncIterator[Served]:  # type: ignore[no-untyped-def]
    async for s in _serve(nc, 3.0, "coalesce-slow"):  # steps of tens of ms: any client keeps up
        yield s


def _request(rid: str, max_tokens: int) -> runtime_pb2.GenerateRequest:
    return runtime_pb2.GenerateRequest(
        request_id=rid, prompt_token_ids=[(i * 7) % 200 + 10 for i in range(40)],
        sampling=runtime_pb2.SamplingParams(max_tokens=max_tokens))


async def _read_all(address: str, req: runtime_pb2.GenerateRequest
                    ) -> list[runtime_pb2.GenerateResponse]:
    async with grpc.aio.insecure_channel(address) as ch:
        return [r async for r in runtime_pb2_grpc.RuntimeStub(ch).Generate(req)]


async def _wait_idle(engine: SimEngine, timeout: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while engine.stats().num_running or engine.stats().kv_blocks_active:
        assert loop.time() < deadline, f"engine still busy: {engine.stats()}"
        await asyncio.sleep(0.01)


async def _read_slowly(served: Served, req: runtime_pb2.GenerateRequest
                       ) -> list[runtime_pb2.GenerateResponse]:
    """Read one message, stop reading until the engine has finished the request, then the rest."""
    async with grpc.aio.insecure_channel(served.address, options=SLOW_CLIENT) as ch:
        call = runtime_pb2_grpc.RuntimeStub(ch).Generate(req)
        out = [await call.read()]
        await _wait_idle(served.engine)
        while (msg := await call.read()) is not grpc.aio.EOF:
            out.append(msg)
        return out


def _tokens(msgs: list[runtime_pb2.GenerateResponse]) -> list[int]:
    return [t for m in msgs for t in m.token_ids]


def _sample(name: str, labels: dict[str, str]) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_a_lagging_client_gets_the_same_stream_in_fewer_messages(
        either_engine: Served) -> None:
    engine = either_engine
    n = 600
    direct = [c async for c in engine.engine.generate(
        _direct_input("direct", _request("direct", n)))]
    messages_before = _sample("basalt_runtime_stream_messages_total", engine.labels)
    tokens_before = _sample("basalt_runtime_stream_tokens_total", engine.labels)
    fast = await _read_all(engine.address, _request("fast", n))
    slow = await _read_slowly(engine, _request("slow", n))

    expect_tokens = [t for c in direct for t in c.token_ids]
    expect_text = "".join(c.text for c in direct)
    assert len(expect_tokens) == n and expect_text == _decode(expect_tokens)
    for msgs in (fast, slow):
        assert _tokens(msgs) == expect_tokens
        assert "".join(m.text for m in msgs) == expect_text
        last = msgs[-1]
        assert last.finish_reason == runtime_pb2.FINISH_REASON_LENGTH
        assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (40, n)
        assert all(m.finish_reason == runtime_pb2.FINISH_REASON_UNSPECIFIED for m in msgs[:-1])
        assert not any(m.HasField("usage") for m in msgs[:-1])
    assert len(slow) < n // 4, f"{len(slow)} messages for {n} tokens: nothing coalesced"
    assert len(slow) < len(fast)
    messages = _sample("basalt_runtime_stream_messages_total", engine.labels) - messages_before
    tokens = _sample("basalt_runtime_stream_tokens_total", engine.labels) - tokens_before
    assert (messages, tokens) == (len(fast) + len(slow), 2 * n)


async def test_a_client_that_keeps_up_gets_one_message_per_engine_step(
        slow_engine: Served) -> None:
    """No batching on a timer: with the engine the slower side, every token goes out alone."""
    n = 12
    msgs = await _read_all(slow_engine.address, _request("paced", n))
    assert [len(m.token_ids) for m in msgs] == [1] * n
    assert "".join(m.text for m in msgs) == _decode(_tokens(msgs))


async def test_a_client_gone_mid_stream_aborts_the_sequence(either_engine: Served) -> None:
    engine = either_engine.engine
    async with grpc.aio.insecure_channel(either_engine.address, options=SLOW_CLIENT) as ch:
        call = runtime_pb2_grpc.RuntimeStub(ch).Generate(_request("gone", 4000))
        await call.read()
        assert engine.stats().num_running == 1
        call.cancel()
    await _wait_idle(engine)  # aborted: not running, its blocks freed


async def test_request_phases_reach_the_metrics(fast_engine: Served) -> None:
    name = "basalt_runtime_request_phase_seconds_count"
    before = {p: _sample(name, fast_engine.labels | {"phase": p})
              for p in ("receive", "engine_add", "first_token", "send")}
    msgs = await _read_all(fast_engine.address, _request("phases", 8))
    after = {p: _sample(name, fast_engine.labels | {"phase": p}) for p in before}
    assert after["receive"] - before["receive"] == 1
    assert after["engine_add"] - before["engine_add"] == 1
    assert after["first_token"] - before["first_token"] == 1
    assert after["send"] - before["send"] == len(msgs)


def _direct_input(rid: str, req: runtime_pb2.GenerateRequest):  # type: ignore[no-untyped-def]
    from services.runtime.core.convert import generate_input_from_proto

    inp = generate_input_from_proto(req, fallback_id=rid)
    inp.request_id = rid
    return inp
