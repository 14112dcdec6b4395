"""A request's state inside the simulator, and its deterministic output tokens (pure, no I/O).

Output tokens are a pure function of (seed, prompt, position): `request_token_seed(seed,
prompt)` once per request, then `output_token_id(token_seed, position, lo, span)`: one
64-byte BLAKE2b digest per 16 positions (`output_token_chunk`), each uint32 word mapped into
[lo, lo + span) by modulo (a bias under span / 2**32, irrelevant here). The same prompt and
seed give the same completion on every replica, in every process, whatever the batching or
preemption.
"""

from __future__ import annotations

import enum
import sys
from array import array
from dataclasses import dataclass, field
from hashlib import blake2b

from basalt.ids import RequestId
from services.runtime.core.engine import FinishReason
from services.runtime.engines.sim.core.block_pool import blake2b_64, token_bytes

_U64 = (1 << 64) - 1
_BIG_ENDIAN = sys.byteorder == "big"
TOKEN_CHUNK = 16  # output tokens are drawn 16 at a time


def request_token_seed(seed: int, prompt_token_ids: list[int]) -> int:
    """The per-request seed of its output tokens (BLAKE2b of seed and prompt)."""
    return blake2b_64((seed & _U64).to_bytes(8, "little") + token_bytes(prompt_token_ids))


def output_token_chunk(token_seed: int, chunk_index: int, lo: int, span: int) -> list[int]:
    """Tokens at positions 16*chunk_index .. 16*chunk_index+15 of a request, in [lo, lo+span):
    one 64-byte BLAKE2b digest of (token_seed, chunk_index), read as 16 uint32."""
    key = (token_seed & _U64).to_bytes(8, "little") + chunk_index.to_bytes(8, "little")
    words = array("I", blake2b(key, digest_size=4 * TOKEN_CHUNK).digest())
    if _BIG_ENDIAN:  # pragma: no cover - only on big-endian hosts
        words.byteswap()
    return [lo + w % span for w in words]


def output_token_id(token_seed: int, position: int, lo: int, span: int) -> int:
    """The token at `position` (index in prompt + output) of a request."""
    return output_token_chunk(token_seed, position // TOKEN_CHUNK, lo, span)[position % TOKEN_CHUNK]


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    """One request: its tokens so far, how many have KV computed, and the blocks holding it."""

    req_id: RequestId
    token_ids: list[int]  # prompt then output; grows by one per decode step
    num_prompt_tokens: int
    max_tokens: int
    lora_name: str | None
    stop_token_ids: frozenset[int]
    arrival_time: float
    token_seed: int
    status: SequenceStatus = SequenceStatus.WAITING
    num_computed_tokens: int = 0  # tokens whose KV is in the blocks
    block_ids: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # of the full blocks of token_ids
    num_registered_blocks: int = 0  # leading blocks already in the prefix cache
    num_cached_tokens: int = -1  # prefix-cache hit at first admission; -1 before it
    first_token_time: float | None = None
    finish_reason: FinishReason | None = None
    num_preemptions: int = 0
    # Output tokens are drawn a chunk at a time: positions token_chunk_start.. of the request.
    token_chunk: list[int] = field(default_factory=list)
    token_chunk_start: int = -TOKEN_CHUNK

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens
