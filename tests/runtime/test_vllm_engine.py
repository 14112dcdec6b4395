"""The vLLM engine against real vLLM (CPU build) and the tiny model: one engine per module."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

pytest.importorskip("vllm")
import psutil  # comes with vllm

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from basalt.tokenizer import load_tokenizer
from basalt_tools.tinymodel import LORA_NAME
from basalt_tools.vllm_cpu import CPU_SETTINGS
from services.runtime.core.engine import (
    Engine,
    EngineInfo,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    SamplingParams,
)
from services.runtime.core.errors import InvalidRequest, PromptTooLong, UnknownLora
from services.runtime.engines.vllm import VllmConfig, VllmEngine

pytestmark = [pytest.mark.vllm, pytest.mark.integration, pytest.mark.timeout(240)]

BLOCK = 32
KV_BYTES = 4 * 2**20  # 128 blocks of 32 tokens for the tiny model: small enough to evict
_ids = iter(range(1_000_000))


class KvLog:
    """Every KV event batch the engine published, collected in the background."""

    def __init__(self) -> None:
        self.events: list[KvEvent] = []

    def mark(self) -> int:
        return len(self.events)

    async def wait_for(
        self, since: int, done: Callable[[list[KvEvent]], bool], timeout: float = 10.0
    ) -> list[KvEvent]:
        deadline = time.monotonic() + timeout
        while not done(self.events[since:]):
            if time.monotonic() > deadline:
                raise AssertionError(f"no such KV events; got {self.events[since:]!r}")
            await asyncio.sleep(0.05)
        return self.events[since:]


@dataclass(slots=True)
class Live:
    engine: VllmEngine
    kv: KvLog
    info: EngineInfo


@pytest.fixture(scope="module")
async def live(tiny_model: Path) -> AsyncIterator[Live]:
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    engine = VllmEngine(
        VllmConfig(
            model=str(tiny_model),
            served_model_name="tiny",
            block_size=BLOCK,
            max_model_len=1024,
            kv_cache_bytes=KV_BYTES,
            max_num_seqs=4,
            engine_settings={**CPU_SETTINGS, "max_loras": 1},
        )
    )
    info = await engine.start()
    kv = KvLog()

    async def collect() -> None:
        async for batch in engine.kv_events():
            kv.events.extend(batch)

    task = asyncio.create_task(collect())
    yield Live(engine, kv, info)
    await engine.shutdown()
    await asyncio.wait_for(task, 5)  # kv_events() ends at shutdown
    leftover = [
        p
        for p in psutil.Process().children(recursive=True)
        if p.pid not in before and not _is_resource_tracker(p)
    ]
    _, alive = psutil.wait_procs(leftover, timeout=10)
    assert not alive, f"vLLM processes left after shutdown: {[p.cmdline() for p in alive]}"


def _is_resource_tracker(p: psutil.Process) -> bool:
    """multiprocessing's per-interpreter helper: shared by every engine, ends with pytest."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(p.cmdline())
    except psutil.Error:
        return False


@pytest.fixture
def engine(live: Live) -> VllmEngine:
    return live.engine


@pytest.fixture
def kv(live: Live) -> KvLog:
    return live.kv


def random_prompt(n: int, seed: int) -> list[int]:
    rng = random.Random(seed)
    return [rng.randrange(5, 1000) for _ in range(n)]  # 0..4 are the tiny model's specials


def request(prompt: list[int], lora: str | None = None, **sampling: object) -> GenerateInput:
    params = SamplingParams(**{"max_tokens": 4, "temperature": 0.0, **sampling})  # type: ignore[arg-type]
    return GenerateInput(f"req-{next(_ids)}", prompt, params, lora)


async def run(engine: VllmEngine, req: GenerateInput) -> list[GenerateChunk]:
    return [c async for c in engine.generate(req)]


def stored_chain(events: list[KvEvent]) -> dict[int, tuple[int | None, list[int]]]:
    """block hash -> (parent hash, that block's tokens) for every BlockStored."""
    chain: dict[int, tuple[int | None, list[int]]] = {}
    for e in events:
        if isinstance(e, BlockStored):
            parent = e.parent_block_hash
            for i, h in enumerate(e.block_hashes):
                chain[h] = (parent, e.token_ids[i * e.block_size : (i + 1) * e.block_size])
                parent = h
    return chain


async def test_start_reports_the_engine(live: Live) -> None:
    engine, info = live.engine, live.info
    assert isinstance(engine, Engine)
    assert (info.model, info.kv_block_size, info.max_model_len) == ("tiny", BLOCK, 1024)
    assert (
        info.kv_blocks_total == 127
    )  # 4 MiB / (2 layers * K,V * 32 tok * 128 dims * bf16), less null
    assert engine.stats().kv_blocks_total == 127


async def test_streams_tokens_and_text(engine: VllmEngine, tiny_model: Path) -> None:
    tok = load_tokenizer(tiny_model)
    prompt = tok.encode("The cat sees the house and the dog")
    req = request(prompt, max_tokens=12, ignore_eos=True)
    chunks = await run(engine, req)
    assert len(chunks) >= 2  # streamed, not one lump
    tokens = [t for c in chunks for t in c.token_ids]
    assert len(tokens) == 12
    assert "".join(c.text for c in chunks) == tok.decode(tokens)
    assert [c.finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)
    last = chunks[-1]
    assert last.finish_reason is FinishReason.LENGTH
    assert last.usage is not None
    assert (last.usage.prompt_tokens, last.usage.completion_tokens) == (len(prompt), 12)
    again = await run(engine, request(prompt, max_tokens=12, ignore_eos=True))
    assert [t for c in again for t in c.token_ids] == tokens  # greedy is deterministic


async def test_stop_token_and_stop_string_end_the_stream(engine: VllmEngine) -> None:
    prompt = random_prompt(20, seed=7)
    free = await run(engine, request(prompt, max_tokens=8, ignore_eos=True))
    free_tokens = [t for c in free for t in c.token_ids]
    stop_at = free_tokens[3]
    chunks = await run(engine, request(prompt, max_tokens=8, stop_token_ids=[stop_at]))
    tokens = [t for c in chunks for t in c.token_ids]
    assert tokens == free_tokens[: free_tokens.index(stop_at) + 1]
    assert chunks[-1].finish_reason is FinishReason.STOP

    free_text = "".join(c.text for c in free)
    stop = free_text[len(free_text) // 2 :][:2]
    assert stop.strip(), f"need visible text to stop on, got {free_text!r}"
    chunks = await run(engine, request(prompt, max_tokens=8, ignore_eos=True, stop=[stop]))
    assert "".join(c.text for c in chunks) == free_text[: free_text.index(stop)]
    assert chunks[-1].finish_reason is FinishReason.STOP


async def test_repeated_prefix_is_cached_and_published(engine: VllmEngine, kv: KvLog) -> None:
    prompt = random_prompt(5 * BLOCK + 10, seed=1)  # 5 full blocks and a partial one
    since = kv.mark()
    first = (await run(engine, request(prompt)))[-1].usage
    assert first is not None and first.cached_prompt_tokens == 0
    events = await kv.wait_for(since, lambda es: len(stored_chain(es)) >= 5)
    chain = stored_chain(events)
    stored = [e for e in events if isinstance(e, BlockStored)]
    assert all(e.block_size == BLOCK and e.lora_name is None for e in stored)
    assert stored[0].parent_block_hash is None  # the prompt's first block starts a chain
    # Walk the chain from its root: the leading full blocks are exactly the prompt's tokens.
    by_parent = {parent: h for h, (parent, _) in chain.items()}
    walked: list[list[int]] = []
    h = by_parent.get(None)
    while h is not None and len(walked) < 5:
        walked.append(chain[h][1])
        h = by_parent.get(h)
    assert walked == [prompt[i * BLOCK : (i + 1) * BLOCK] for i in range(5)]

    second = (await run(engine, request(prompt)))[-1].usage
    assert second is not None and second.cached_prompt_tokens >= 5 * BLOCK


async def test_cache_pressure_evicts_with_block_removed(engine: VllmEngine, kv: KvLog) -> None:
    since = kv.mark()
    for seed in range(100, 106):  # 6 prompts x 28 blocks > 127 blocks in the cache
        await run(engine, request(random_prompt(28 * BLOCK, seed), max_tokens=1))
    events = await kv.wait_for(since, lambda es: any(isinstance(e, BlockRemoved) for e in es))
    removed = {h for e in events if isinstance(e, BlockRemoved) for h in e.block_hashes}
    every_stored = set(stored_chain(kv.events))
    assert removed and removed <= every_stored  # only blocks we were told about go away


async def test_reset_clears_the_cache(engine: VllmEngine, kv: KvLog) -> None:
    prompt = random_prompt(3 * BLOCK, seed=2)
    await run(engine, request(prompt))
    assert await engine.reset_prefix_cache()
    since = kv.mark()
    usage = (await run(engine, request(prompt)))[-1].usage
    assert usage is not None and usage.cached_prompt_tokens == 0
    events = await kv.wait_for(since, lambda es: any(isinstance(e, AllBlocksCleared) for e in es))
    first_clear = next(i for i, e in enumerate(events) if isinstance(e, AllBlocksCleared))
    assert all(not isinstance(e, BlockStored) for e in events[:first_clear])


async def test_lora_load_generate_unload(engine: VllmEngine, kv: KvLog, tiny_model: Path) -> None:
    path = str(tiny_model / "lora" / LORA_NAME)
    await engine.load_lora(LORA_NAME, path)
    assert engine.loras() == [LORA_NAME]
    prompt = random_prompt(2 * BLOCK + 3, seed=3)
    since = kv.mark()
    chunks = await run(engine, request(prompt, lora=LORA_NAME, max_tokens=6, ignore_eos=True))
    assert sum(len(c.token_ids) for c in chunks) == 6
    events = await kv.wait_for(since, lambda es: any(isinstance(e, BlockStored) for e in es))
    assert {e.lora_name for e in events if isinstance(e, BlockStored)} == {LORA_NAME}
    # The base model does not reuse the adapter's blocks: they are keyed by the LoRA too.
    usage = (await run(engine, request(prompt)))[-1].usage
    assert usage is not None and usage.cached_prompt_tokens == 0

    await engine.unload_lora(LORA_NAME)
    assert engine.loras() == []
    with pytest.raises(UnknownLora) as err:
        await run(engine, request(prompt, lora=LORA_NAME))
    assert err.value.lora_name == LORA_NAME and err.value.loaded == []


async def test_bad_requests_fail_before_any_chunk(engine: VllmEngine) -> None:
    with pytest.raises(PromptTooLong) as err:
        await run(engine, request(random_prompt(1000, seed=4), max_tokens=100))
    assert (err.value.prompt_tokens, err.value.max_model_len) == (1000, 1024)
    with pytest.raises(InvalidRequest, match="vocabulary"):
        await run(engine, request([5, 6, 1000]))
    with pytest.raises(InvalidRequest, match="empty"):
        await run(engine, request([]))
    with pytest.raises(InvalidRequest, match="top_p"):
        await run(engine, request([5, 6], top_p=0.0))
    with pytest.raises(InvalidRequest, match="stop token id -1"):
        await run(engine, request([5, 6], stop_token_ids=[-1]))
    with pytest.raises(InvalidRequest, match="empty string"):  # vLLM's own check, mapped
        await run(engine, request([5, 6], stop=[""]))
    assert engine.stats().num_running == 0


async def _wait_idle(engine: VllmEngine, timeout: float = 1.0) -> None:
    """Until vLLM reports nothing running and every KV block is free (the reset succeeds).

    The aborted requests below ask for 900 tokens, about 3 s of decoding for the tiny model
    on this CPU: idle within a second means vLLM stopped them, not that they ran out.
    """
    deadline = time.monotonic() + timeout
    while not (engine.stats().num_running == 0 and await engine.reset_prefix_cache()):
        assert time.monotonic() < deadline, f"still busy: {engine.stats()}"
        await asyncio.sleep(0.1)


async def test_closing_a_stream_aborts_the_request(engine: VllmEngine) -> None:
    stream = engine.generate(request(random_prompt(40, seed=5), max_tokens=900, ignore_eos=True))
    got = 0
    async for chunk in stream:
        got += len(chunk.token_ids)
        if got >= 3:
            break
    assert engine.stats().num_running == 1
    await stream.aclose()  # type: ignore[attr-defined]
    await _wait_idle(engine)


async def test_cancelling_the_consumer_aborts_the_request(engine: VllmEngine) -> None:
    first = asyncio.Event()

    async def consume() -> None:
        async for _ in engine.generate(
            request(random_prompt(40, seed=6), max_tokens=900, ignore_eos=True)
        ):
            first.set()

    task = asyncio.create_task(consume())
    await asyncio.wait_for(first.wait(), 10)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await _wait_idle(engine)


async def test_abort_by_request_id(engine: VllmEngine) -> None:
    req = request(random_prompt(40, seed=8), max_tokens=900, ignore_eos=True)
    stream = engine.generate(req)
    first = await anext(stream)  # type: ignore[call-overload]
    assert first.token_ids
    assert await engine.abort(req.request_id)
    rest = [c async for c in stream]
    assert rest[-1].finish_reason is FinishReason.ABORT
    assert sum(len(c.token_ids) for c in [first, *rest]) < 900
    assert not await engine.abort(req.request_id)  # no longer running
    await _wait_idle(engine)
