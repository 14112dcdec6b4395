"""`SimEngine` on a real asyncio loop: streaming, cancellation, validation, clock, events, LoRA."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from basalt.kvevents import BlockStored, KvEvent
from services.runtime.core.engine import (
    Engine,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    SamplingParams,
)
from services.runtime.core.errors import (
    Draining,
    InvalidRequest,
    NotSupported,
    PromptTooLong,
    UnknownLora,
)
from services.runtime.engines.sim.core.replica import SimReplicaCore
from services.runtime.engines.sim.engine import SimConfig, SimEngine

BS = 16


def _prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 31) % 30000 + 1 for i in range(n)]


def _req(rid: str, prompt: list[int], max_tokens: int = 8, **kw: object) -> GenerateInput:
    lora = kw.pop("lora_name", None)
    return GenerateInput(rid, prompt, SamplingParams(max_tokens=max_tokens, **kw), lora_name=lora)  # type: ignore[arg-type]


@pytest.fixture
async def engine() -> AsyncIterator[SimEngine]:
    eng = SimEngine(
        SimConfig(time_scale=0.01, num_blocks=1024),
        decode=lambda ids: "".join(f"<{i}>" for i in ids),
    )
    await eng.start()
    yield eng
    await eng.shutdown()


async def _collect(eng: SimEngine, req: GenerateInput) -> list[GenerateChunk]:
    return [c async for c in eng.generate(req)]


async def test_start_describes_the_replica_and_it_is_an_engine() -> None:
    eng = SimEngine(SimConfig(model_name="m", block_size=32, num_blocks=512, max_model_len=4096))
    info = await eng.start()
    assert (info.model, info.kv_block_size, info.kv_blocks_total, info.max_model_len) == (
        "m",
        32,
        512,
        4096,
    )
    assert isinstance(eng, Engine) and eng.kind == "sim"
    await eng.shutdown()


async def test_a_request_streams_tokens_text_and_usage(engine: SimEngine) -> None:
    prompt = _prompt(1, 40)
    chunks = await _collect(engine, _req("a", prompt, max_tokens=12))
    tokens = [t for c in chunks for t in c.token_ids]
    assert len(tokens) == 12 and len(chunks) > 1
    assert "".join(c.text for c in chunks) == "".join(f"<{t}>" for t in tokens)
    last = chunks[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None
    assert (
        last.usage.prompt_tokens,
        last.usage.completion_tokens,
        last.usage.cached_prompt_tokens,
    ) == (40, 12, 0)
    assert all(c.finish_reason is None and c.usage is None for c in chunks[:-1])
    # The same tokens a core gives in virtual time: the adapter adds only the clock.
    core = SimReplicaCore(engine.config)
    core.add_request("a", prompt, 12)
    expected: list[int] = []
    t = 0.0
    while core.has_work:
        step = core.step(t)
        t = step.end
        expected += step.tokens.values()
    assert tokens == expected


async def test_repeated_prefix_reports_cached_prompt_tokens(engine: SimEngine) -> None:
    prefix = _prompt(2, 5 * BS)
    first = await _collect(engine, _req("p1", prefix + [11, 12, 13]))
    second = await _collect(engine, _req("p2", prefix + [21, 22, 23]))
    assert first[-1].usage is not None and first[-1].usage.cached_prompt_tokens == 0
    assert second[-1].usage is not None and second[-1].usage.cached_prompt_tokens == 5 * BS


async def test_client_leaving_mid_stream_frees_the_blocks(engine: SimEngine) -> None:
    stream = engine.generate(_req("gone", _prompt(3, 6 * BS), max_tokens=5000))
    got = 0
    async for _ in stream:
        got += 1
        if got == 3:
            assert engine.stats().kv_blocks_active >= 6
            break
    await stream.aclose()  # type: ignore[attr-defined]
    stats = engine.stats()
    assert (stats.num_running, stats.num_waiting, stats.kv_blocks_active) == (0, 0, 0)


async def test_cancelled_consumer_task_frees_the_blocks(engine: SimEngine) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(_req("cancelled", _prompt(4, 3 * BS), max_tokens=5000)):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 5)
    assert engine.stats().num_running == 1
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert engine.stats().kv_blocks_active == 0 and engine.stats().num_running == 0


@pytest.mark.parametrize(
    ("req", "error", "needle"),
    [
        (_req("e", []), InvalidRequest, "empty"),
        (_req("l", _prompt(5, 10), max_tokens=9000), PromptTooLong, "context length"),
        (_req("t", _prompt(5, 10), temperature=-1.0), InvalidRequest, "temperature"),
        (_req("p", _prompt(5, 10), top_p=1.5), InvalidRequest, "top_p"),
        (_req("n", _prompt(5, 10), lora_name="nope"), UnknownLora, "nope"),
        (_req("v", [10, 10**9]), InvalidRequest, "vocab"),
    ],
)
async def test_bad_input_is_refused_before_any_chunk(
    engine: SimEngine, req: GenerateInput, error: type[Exception], needle: str
) -> None:
    stream = engine.generate(req)
    with pytest.raises(error, match=needle):
        await anext(stream)  # type: ignore[call-overload]
    assert engine.stats().num_waiting == 0
    ok = await _collect(engine, _req("ok", _prompt(6, 8), max_tokens=3))
    assert ok[-1].usage is not None and ok[-1].usage.completion_tokens == 3


async def test_abort_ends_the_stream_with_abort(engine: SimEngine) -> None:
    stream = engine.generate(_req("ab", _prompt(7, 20), max_tokens=5000))
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.token_ids
    assert await engine.abort("ab") is True
    rest = [c async for c in stream]  # type: ignore[attr-defined]
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert engine.stats().kv_blocks_active == 0
    assert await engine.abort("ab") is False


async def test_time_scale_makes_a_100_token_generation_fast() -> None:
    prompt = _prompt(8, 200)
    core = SimReplicaCore(SimConfig())
    core.add_request("x", prompt, 100)
    virtual = 0.0
    while core.has_work:
        virtual = core.step(virtual).end
    assert 0.4 < virtual < 1.0  # ~6 ms a token on the default H100 profile
    for scale, low, high in ((0.01, 0.0, 0.3), (0.3, 0.9 * 0.3 * virtual, 10.0)):
        eng = SimEngine(SimConfig(time_scale=scale))
        await eng.start()
        t0 = time.monotonic()
        chunks = await _collect(eng, _req("x", prompt, max_tokens=100))
        wall = time.monotonic() - t0
        await eng.shutdown()
        assert sum(len(c.token_ids) for c in chunks) == 100
        assert low <= wall < high, (scale, wall, virtual)


async def test_concurrent_requests_share_steps(engine: SimEngine) -> None:
    reqs = [_req(f"c{i}", _prompt(20 + i, 30), max_tokens=40) for i in range(8)]
    steps_before = engine.core.stats().num_steps
    outs = await asyncio.gather(*(_collect(engine, r) for r in reqs))
    assert all(sum(len(c.token_ids) for c in out) == 40 for out in outs)
    assert engine.core.stats().num_steps - steps_before < 8 * 40 / 2  # batched, not one by one


async def test_kv_events_follow_the_prompt_and_end_at_shutdown() -> None:
    eng = SimEngine(SimConfig(time_scale=0.01))
    await eng.start()
    prompt = _prompt(9, 3 * BS + 5)
    await _collect(eng, _req("k", prompt, max_tokens=2))
    await eng.shutdown()
    events: list[KvEvent] = [e async for batch in eng.kv_events() for e in batch]
    stored = [e for e in events if isinstance(e, BlockStored)]
    assert [t for e in stored for t in e.token_ids][: 3 * BS] == prompt[: 3 * BS]
    assert stored[0].parent_block_hash is None and stored[0].block_size == BS


async def test_idle_engine_does_not_spin(engine: SimEngine) -> None:
    await _collect(engine, _req("i", _prompt(10, 10), max_tokens=3))
    cpu0 = time.process_time()
    await asyncio.sleep(0.3)
    assert time.process_time() - cpu0 < 0.1


async def test_lora_names_are_tracked_and_enter_the_hashes() -> None:
    eng = SimEngine(SimConfig(time_scale=0.01, lora_load_s=5.0))
    await eng.start()
    t0 = time.monotonic()
    await eng.load_lora("ad1", "/nowhere")
    assert time.monotonic() - t0 >= 0.05 * 0.9  # 5 simulated seconds at 100x
    assert eng.loras() == ["ad1"]
    prompt = _prompt(11, 4 * BS + 1)
    await _collect(eng, _req("base", prompt))
    with_lora = await _collect(eng, _req("lora", prompt, lora_name="ad1"))
    assert with_lora[-1].usage is not None and with_lora[-1].usage.cached_prompt_tokens == 0
    await eng.unload_lora("ad1")
    assert eng.loras() == []
    with pytest.raises(UnknownLora):
        await anext(eng.generate(_req("gone", prompt, lora_name="ad1")))  # type: ignore[call-overload]
    with pytest.raises(UnknownLora):
        await eng.unload_lora("ad1")
    await eng.shutdown()


async def test_predict_is_not_supported_and_shutdown_aborts_in_flight_work() -> None:
    eng = SimEngine(SimConfig(time_scale=0.01))
    await eng.start()
    with pytest.raises(NotSupported):
        eng.predict({})
    stream = eng.generate(_req("s", _prompt(12, 10), max_tokens=5000))
    await anext(stream)  # type: ignore[call-overload]
    await eng.shutdown()
    rest = [c async for c in stream]  # type: ignore[attr-defined]
    assert rest[-1].finish_reason is FinishReason.ABORT
    with pytest.raises(Draining):
        await anext(eng.generate(_req("late", _prompt(12, 10))))  # type: ignore[call-overload]


async def test_a_failing_step_loop_ends_streams_instead_of_hanging() -> None:
    eng = SimEngine(SimConfig(time_scale=0.01))
    await eng.start()
    stream = eng.generate(_req("f", _prompt(13, 10), max_tokens=5000))
    await anext(stream)  # type: ignore[call-overload]

    def broken(now: float) -> None:
        raise RuntimeError("simulated bug")

    eng.core.step = broken  # type: ignore[method-assign, assignment]
    rest = await asyncio.wait_for(_rest(stream), 5)
    assert rest[-1].finish_reason is FinishReason.ABORT
    with pytest.raises(RuntimeError, match="step loop failed"):
        await anext(eng.generate(_req("after", _prompt(13, 10))))  # type: ignore[call-overload]
    await eng.shutdown()


async def _rest(stream: AsyncIterator[GenerateChunk]) -> list[GenerateChunk]:
    return [c async for c in stream]
