"""A request's state inside the simulator, and its deterministic output tokens (pure, no I/O).

Output tokens are a pure function of (seed, prompt, position): `request_token_seed(seed,
prompt)` once per request, then `output_token_id(token_seed, position, lo, span)` per token,
a splitmix64 mix giving ids in [lo, lo + span). The same prompt and seed give the same
completion on every replica, in every process, whatever the batching or preemption.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

from basalt.ids import RequestId

from ..engine import FinishReason
from .block_pool import blake2b_64, token_bytes

_U64 = (1 << 64) - 1


def request_token_seed(seed: int, prompt_token_ids: list[int]) -> int:
    """The per-request seed of its output tokens (BLAKE2b of seed and prompt)."""
    return blake2b_64((seed & _U64).to_bytes(8, "little") + token_bytes(prompt_token_ids))


def output_token_id(token_seed: int, position: int, lo: int, span: int) -> int:
    """The token at `position` (index in prompt + output) of a request: splitmix64, in range."""
    z = (token_seed + position * 0x9E3779B97F4A7C15) & _U64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _U64
    return lo + (z ^ (z >> 31)) % span


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

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens
