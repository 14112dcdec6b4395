"""`interleave`, which both KServe servicers' ModelStreamInfer use: handlers run concurrently,
their output interleaves, the stream ends when every handler is done, closing it cancels them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

from basalt.kserve.server import interleave


async def _requests(*items: str) -> AsyncIterator[str]:
    for item in items:
        yield item


async def test_handlers_run_concurrently_and_the_stream_ends_after_the_last() -> None:
    gate = asyncio.Event()

    async def handle(req: str, emit: Callable[[str], None]) -> None:
        if req == "slow":
            await gate.wait()  # held until "fast" has emitted: they run at once
        emit(f"{req}-1")
        if req == "fast":
            gate.set()
        await asyncio.sleep(0)
        emit(f"{req}-2")

    out = [r async for r in interleave(_requests("slow", "fast"), handle)]
    assert out[0] == "fast-1"
    assert sorted(out) == ["fast-1", "fast-2", "slow-1", "slow-2"]


async def test_closing_the_stream_cancels_the_handlers() -> None:
    cancelled: list[str] = []

    async def handle(req: str, emit: Callable[[str], None]) -> None:
        emit(req)
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(req)
            raise

    stream = interleave(_requests("a", "b"), handle)
    assert {await anext(stream), await anext(stream)} == {"a", "b"}
    await stream.aclose()
    await asyncio.sleep(0)
    assert sorted(cancelled) == ["a", "b"]


async def test_at_most_max_in_flight_handlers_run_on_one_stream() -> None:
    running, peak = 0, 0

    async def handle(req: str, emit: Callable[[str], None]) -> None:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        await asyncio.sleep(0.01)
        running -= 1
        emit(req)

    reqs = [str(i) for i in range(10)]
    out = [r async for r in interleave(_requests(*reqs), handle, max_in_flight=3)]
    assert sorted(out) == sorted(reqs), "every request is served, in turn"
    assert peak == 3
