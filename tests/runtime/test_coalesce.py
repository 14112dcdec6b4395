"""The coalescing core: merged chunks carry exactly the engine's tokens, text, finish and usage."""

from __future__ import annotations

import pytest

from services.runtime.core.coalesce import ChunkBuffer, merge
from services.runtime.core.engine import FinishReason, GenerateChunk, Usage

USAGE = Usage(prompt_tokens=5, completion_tokens=4, cached_prompt_tokens=0)


def _chunks() -> list[GenerateChunk]:
    return [GenerateChunk([1], "a"), GenerateChunk([2, 3], "bc"), GenerateChunk([], ""),
            GenerateChunk([4], "d", FinishReason.LENGTH, USAGE)]


def test_merge_concatenates_in_order_and_keeps_the_end() -> None:
    m = merge(_chunks())
    assert m.token_ids == [1, 2, 3, 4]
    assert m.text == "abcd"
    assert m.finish_reason is FinishReason.LENGTH
    assert m.usage == USAGE


def test_merge_of_one_chunk_is_that_chunk() -> None:
    c = GenerateChunk([7], "x")
    assert merge([c]) is c


def test_merge_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        merge([])


def test_merge_does_not_touch_its_inputs() -> None:
    chunks = _chunks()
    merge(chunks)
    assert chunks[0].token_ids == [1] and chunks[1].token_ids == [2, 3]


def test_buffer_takes_what_accumulated_since_the_last_take() -> None:
    buf = ChunkBuffer()
    assert buf.take() is None
    chunks = _chunks()
    buf.push(chunks[0])
    assert buf.take() is chunks[0]  # a writer that keeps up: one message per chunk
    for c in chunks[1:]:
        buf.push(c)
    assert len(buf) == 3
    m = buf.take()  # a writer that lagged: all of it in one
    assert m is not None and m.token_ids == [2, 3, 4] and m.text == "bcd"
    assert m.finish_reason is FinishReason.LENGTH and m.usage == USAGE
    assert buf.take() is None
    assert (buf.chunks_in, buf.messages_out, buf.coalesced) == (4, 2, 2)


@pytest.mark.parametrize("pattern", [[1, 1, 1, 1], [4], [2, 2], [1, 3], [3, 1]])
def test_any_take_pattern_delivers_the_same_stream(pattern: list[int]) -> None:
    """However the writer's pace cuts the stream, the concatenation is the engine's."""
    chunks = _chunks()
    buf = ChunkBuffer()
    out: list[GenerateChunk] = []
    it = iter(chunks)
    for n in pattern:
        for _ in range(n):
            buf.push(next(it))
        taken = buf.take()
        assert taken is not None
        out.append(taken)
    assert [t for c in out for t in c.token_ids] == [1, 2, 3, 4]
    assert "".join(c.text for c in out) == "abcd"
    assert [c.finish_reason for c in out][-1] is FinishReason.LENGTH
    assert all(c.finish_reason is None for c in out[:-1])
    assert len(out) == len(pattern)
