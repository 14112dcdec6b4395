"""Coalescing one request's engine chunks into as few stream messages as its client's pace needs (no I/O).

The engine's chunks go into a `ChunkBuffer` as the engine makes them; the writer `take()`s what
accumulated since its last write completed. A client that keeps up gets one message per engine
chunk (nothing waits for company: no timer); one that lags gets everything that piled up in one
message. Either way the concatenated token ids and text are the engine's, in order, and the
finish reason and usage ride on the last message.
"""

from __future__ import annotations

from collections.abc import Sequence

from services.runtime.core.engine import GenerateChunk

__all__ = ["ChunkBuffer", "merge"]


def merge(chunks: Sequence[GenerateChunk]) -> GenerateChunk:
    """One chunk carrying `chunks` in order: tokens and text concatenated, the finish reason
    and usage of the one that had them (the last, by the engine contract). One chunk comes
    back as itself (no copy)."""
    if len(chunks) == 1:
        return chunks[0]
    if not chunks:
        raise ValueError("merge() needs at least one chunk")
    token_ids: list[int] = []
    texts: list[str] = []
    finish_reason = None
    usage = None
    for c in chunks:
        token_ids += c.token_ids
        if c.text:
            texts.append(c.text)
        if c.finish_reason is not None:
            finish_reason = c.finish_reason
        if c.usage is not None:
            usage = c.usage
    return GenerateChunk(token_ids, "".join(texts), finish_reason, usage)


class ChunkBuffer:
    """Chunks the engine made that the writer has not sent yet.

    `push` never blocks and never drops; `take` returns them merged (None when empty).
    `chunks_in` and `messages_out` count what went through, so `coalesced` is how many
    engine chunks rode in an earlier chunk's message.
    """

    __slots__ = ("_pending", "chunks_in", "messages_out")

    def __init__(self) -> None:
        self._pending: list[GenerateChunk] = []
        self.chunks_in = 0
        self.messages_out = 0

    def __len__(self) -> int:
        return len(self._pending)

    def push(self, chunk: GenerateChunk) -> None:
        self._pending.append(chunk)
        self.chunks_in += 1

    def take(self) -> GenerateChunk | None:
        pending = self._pending
        if not pending:
            return None
        if len(pending) == 1:
            chunk = pending.pop()
        else:
            chunk = merge(pending)
            pending.clear()
        self.messages_out += 1
        return chunk

    @property
    def coalesced(self) -> int:
        """Engine chunks that were merged into another's message so far."""
        return self.chunks_in - len(self._pending) - self.messages_out
