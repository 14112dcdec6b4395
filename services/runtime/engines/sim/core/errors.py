"""Errors of the vLLM simulator; each carries its data (no I/O)."""

from __future__ import annotations

from services.runtime.core.errors import InvalidRequest


class SimConfigError(ValueError):
    """A simulator setting is out of range; names the setting."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        super().__init__(f"simulator setting {field}={value!r}: {reason}")


class DuplicateRequest(InvalidRequest):
    """A request id that is already in flight on this replica."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        super().__init__(f"request id {request_id!r} is already in flight on this replica")


class TokenOutOfVocab(InvalidRequest):
    """A prompt token id outside [0, vocab_size)."""

    def __init__(self, token_id: int, position: int, vocab_size: int) -> None:
        self.token_id = token_id
        self.position = position
        self.vocab_size = vocab_size
        super().__init__(
            f"prompt token id {token_id} at position {position} is outside the model's "
            f"vocab of {vocab_size} tokens"
        )


class OutOfBlocks(RuntimeError):
    """The block pool was asked for more free blocks than it has (a caller bug: check first)."""

    def __init__(self, requested: int, free: int) -> None:
        self.requested = requested
        self.free = free
        super().__init__(f"asked for {requested} KV blocks with only {free} free")
