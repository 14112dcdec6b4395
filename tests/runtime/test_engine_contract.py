"""One contract suite for the runtime's `Engine` interface, run against every engine that can
run here: `sim` (the simulator), `python` (a Truss-style model) and `vllm` (the real vLLM CPU
engine on the tiny model), in the manner of llm-d's one index suite run against each backend.

It asserts only what `services/runtime/core/engine.py` promises: `start` describes the model;
`generate` streams chunks, `max_tokens` bounds them, the last carries the finish reason and
usage, bad input raises `InvalidRequest` before any chunk, closing the stream or `abort` stops
the request; LLM engines publish KV events after a prompt and refuse `predict` with
`NotSupported`; the python engine serves `predict` and refuses `generate`; `kv_events` ends at
`shutdown`. Each engine is started once per module.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from basalt.kvevents import BlockStored, KvEvent
from services.runtime.core.engine import (
    Engine,
    EngineInfo,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    SamplingParams,
)
from services.runtime.core.errors import InvalidRequest, NotSupported

MODELS = Path(__file__).parent / "models"
_ids = iter(range(1_000_000))


@dataclass(slots=True)
class Subject:
    """An engine under contract, started, with its KV events collected in the background."""

    name: str
    engine: Engine
    info: EngineInfo
    is_llm: bool
    events: list[KvEvent] = field(default_factory=list)
    collector: asyncio.Task[None] | None = None

    def prompt(self, n: int, seed: int) -> list[int]:
        # Token ids 5..999 exist in every engine's vocabulary (0..4 are the tiny model's specials).
        return [5 + (seed * 7919 + i * 31) % 990 for i in range(n)]


def _request(prompt: list[int], **sampling: object) -> GenerateInput:
    params = SamplingParams(**{"max_tokens": 4, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerateInput(f"contract-{next(_ids)}", prompt, params)


async def _build(name: str, tiny_model: Path) -> tuple[Engine, bool]:
    if name == "sim":
        from services.runtime.engines.sim.engine import SimConfig, SimEngine

        return SimEngine(SimConfig(time_scale=0.01, num_blocks=1024, block_size=16)), True
    if name == "python":
        from services.runtime.engines.python_model import PythonModelEngine

        return PythonModelEngine(MODELS / "echo", "echo-served"), False
    pytest.importorskip("vllm")
    from basalt_tools.vllm_cpu import CPU_SETTINGS
    from services.runtime.engines.vllm import VllmConfig, VllmEngine

    config = VllmConfig(model=str(tiny_model), served_model_name="tiny", block_size=32,
                        max_model_len=1024, kv_cache_bytes=4 * 2**20, max_num_seqs=4,
                        engine_settings=dict(CPU_SETTINGS))
    return VllmEngine(config), True


@pytest.fixture(scope="module", params=[
    "sim", "python", pytest.param("vllm", marks=[pytest.mark.vllm, pytest.mark.integration]),
])
async def subject(request: pytest.FixtureRequest, tiny_model: Path) -> AsyncIterator[Subject]:
    engine, is_llm = await _build(request.param, tiny_model)
    info = await engine.start()
    s = Subject(request.param, engine, info, is_llm)

    async def collect() -> None:
        async for batch in engine.kv_events():
            s.events.extend(batch)

    s.collector = asyncio.create_task(collect())
    yield s
    await engine.shutdown()
    # kv_events() ends at shutdown, for every engine
    await asyncio.wait_for(s.collector, 10)
    await engine.shutdown()  # a second shutdown is harmless


async def _run(engine: Engine, req: GenerateInput) -> list[GenerateChunk]:
    return [c async for c in engine.generate(req)]


async def _until(probe: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def test_is_an_engine_and_describes_its_model(subject: Subject) -> None:
    assert isinstance(subject.engine, Engine)
    assert subject.engine.kind == subject.name
    assert subject.info.model
    stats = subject.engine.stats()
    assert 0.0 <= stats.kv_usage <= 1.0 and stats.num_running >= 0
    if subject.is_llm:
        assert subject.info.kv_block_size > 0 and subject.info.kv_blocks_total > 0
        assert subject.info.max_model_len > 0


async def test_generate_streams_at_most_max_tokens_and_ends_with_reason_and_usage(
        subject: Subject) -> None:
    req = _request(subject.prompt(40, seed=1), max_tokens=5, ignore_eos=True)
    if not subject.is_llm:
        with pytest.raises(NotSupported):
            await _run(subject.engine, req)
        return
    chunks = await _run(subject.engine, req)
    produced = sum(len(c.token_ids) for c in chunks)
    last = chunks[-1]
    assert produced == 5, "ignore_eos: exactly max_tokens"
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (40, 5)
    assert all(c.usage is None and c.finish_reason is None for c in chunks[:-1])


async def test_two_concurrent_requests_both_complete(subject: Subject) -> None:
    if not subject.is_llm:
        outs = await asyncio.gather(*(_predict(subject.engine, {"n": i}) for i in range(2)))
        assert [o[0]["echo"] for o in outs] == [{"n": 0}, {"n": 1}]
        return
    reqs = [_request(subject.prompt(30, seed=10 + i), max_tokens=6, ignore_eos=True)
            for i in range(2)]
    outs = await asyncio.gather(*(_run(subject.engine, r) for r in reqs))
    assert [sum(len(c.token_ids) for c in out) for out in outs] == [6, 6]


async def test_bad_input_is_refused_before_any_chunk(subject: Subject) -> None:
    if not subject.is_llm:
        with pytest.raises(InvalidRequest):
            await _predict(subject.engine, b"{not json")
        return
    for bad in (_request([]), _request(subject.prompt(8, seed=2), top_p=0.0),
                _request(subject.prompt(subject.info.max_model_len + 1, seed=3))):
        with pytest.raises(InvalidRequest):
            await _run(subject.engine, bad)
    assert subject.engine.stats().num_running == 0


async def test_abort_stops_a_running_request(subject: Subject) -> None:
    if not subject.is_llm:
        assert await subject.engine.abort("nothing-running") is False
        return
    req = _request(subject.prompt(40, seed=4), max_tokens=900, ignore_eos=True)
    stream = subject.engine.generate(req)
    first = await anext(stream)
    assert await subject.engine.abort(req.request_id) is True
    rest = [c async for c in stream]
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert sum(len(c.token_ids) for c in [first, *rest]) < 900
    assert await subject.engine.abort(req.request_id) is False
    await _until(lambda: subject.engine.stats().num_running == 0, 5.0, "still running")


async def test_closing_the_stream_ends_the_request(subject: Subject) -> None:
    if not subject.is_llm:
        return  # predict streams are covered by test_python_engine.py
    stream = subject.engine.generate(
        _request(subject.prompt(40, seed=5), max_tokens=900, ignore_eos=True))
    await anext(stream)
    await stream.aclose()
    await _until(lambda: subject.engine.stats().num_running == 0, 5.0,
                 "the closed stream's request still runs")


async def test_kv_events_follow_a_prompt(subject: Subject) -> None:
    if not subject.is_llm:
        await asyncio.sleep(0.05)
        assert subject.events == [], "a python model has no KV cache"
        return
    since = len(subject.events)
    block = subject.info.kv_block_size
    await _run(subject.engine, _request(subject.prompt(3 * block, seed=6), max_tokens=2))

    def stored() -> int:
        return sum(len(e.block_hashes) for e in subject.events[since:]
                   if isinstance(e, BlockStored))

    await _until(lambda: stored() >= 3, 10.0, f"no BlockStored for 3 blocks: {subject.events[since:]}")


async def test_predict_is_served_by_python_models_only(subject: Subject) -> None:
    if subject.is_llm:
        with pytest.raises(NotSupported):
            await _predict(subject.engine, {"x": 1})
        return
    out = await _predict(subject.engine, {"x": 1})
    assert out[0]["echo"] == {"x": 1}


async def _predict(engine: Engine, payload: object) -> list:
    return [item async for item in engine.predict(payload)]
