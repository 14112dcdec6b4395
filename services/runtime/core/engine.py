"""The engine interface every runtime engine implements, and its plain data types (no I/O).

An engine owns one model. The runtime's gRPC server, KV-event bridge and load reporter talk
to engines only through `Engine`; adding an engine means implementing this protocol.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from basalt.kvevents import KvEvent
from services.runtime.core.errors import InvalidRequest


class FinishReason(enum.Enum):
    STOP = "stop"
    LENGTH = "length"
    ABORT = "abort"


@dataclass(slots=True)
class SamplingParams:
    max_tokens: int = 16
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    seed: int | None = None
    stop: list[str] = field(default_factory=list)
    stop_token_ids: list[int] = field(default_factory=list)
    ignore_eos: bool = False

    def validate(self) -> None:
        """Raise InvalidRequest with a clear message for out-of-range values."""
        if self.max_tokens < 1:
            raise InvalidRequest(f"max_tokens must be at least 1, got {self.max_tokens}")
        if not 0.0 <= self.temperature <= 100.0:
            raise InvalidRequest(f"temperature must be in [0, 100], got {self.temperature}")
        if not 0.0 < self.top_p <= 1.0:
            raise InvalidRequest(f"top_p must be in (0, 1], got {self.top_p}")
        if self.top_k < 0:
            raise InvalidRequest(f"top_k must be 0 (off) or positive, got {self.top_k}")


@dataclass(slots=True)
class GenerateInput:
    request_id: str
    prompt_token_ids: list[int]
    sampling: SamplingParams
    lora_name: str | None = None


@dataclass(slots=True)
class Usage:
    prompt_tokens: int
    completion_tokens: int
    cached_prompt_tokens: int


@dataclass(slots=True)
class GenerateChunk:
    """New tokens since the last chunk; finish_reason and usage only on the last one."""

    token_ids: list[int]
    text: str = ""
    finish_reason: FinishReason | None = None
    usage: Usage | None = None


@dataclass(slots=True)
class EngineInfo:
    model: str
    kv_block_size: int
    kv_blocks_total: int
    max_model_len: int


@dataclass(slots=True)
class EngineStats:
    num_running: int
    num_waiting: int
    kv_blocks_active: int
    kv_blocks_total: int

    @property
    def kv_usage(self) -> float:
        return self.kv_blocks_active / self.kv_blocks_total if self.kv_blocks_total else 0.0


@runtime_checkable
class Engine(Protocol):
    """One model in one engine. Methods are called from the runtime's asyncio loop."""

    kind: str  # "vllm", "trtllm", "sim", "python"

    async def start(self) -> EngineInfo:
        """Load the model; return what the replica record advertises."""
        ...

    def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        """Stream chunks. Raises InvalidRequest before the first chunk for bad input.
        Closing the generator (client gone) must abort the sequence and free its blocks."""
        ...

    async def abort(self, request_id: str) -> bool:
        """Abort a running request; False when it is not running."""
        ...

    def kv_events(self) -> AsyncIterator[list[KvEvent]]:
        """Batches of KV events in the order the engine produced them (empty for python)."""
        ...

    def stats(self) -> EngineStats: ...

    def loras(self) -> list[str]:
        """Names of LoRA adapters loaded now."""
        ...

    async def load_lora(self, name: str, path: str) -> None: ...

    async def unload_lora(self, name: str) -> None: ...

    def predict(self, payload: Any) -> AsyncGenerator[Any, None]:
        """Truss-style predict; LLM engines raise NotSupported."""
        ...

    async def shutdown(self) -> None: ...
