"""Settings of the vLLM simulator, checked at construction (pure, no I/O).

One `SimConfig` serves both layers: `SimReplicaCore` reads the engine shape, scheduler limits,
profile and seeds; `SimEngine` adds the clock (`time_scale`) and `lora_load_s`. A bad value
raises SimConfigError naming the setting.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from services.runtime.engines.sim.core.block_pool import HashFunction, blake2b_64
from services.runtime.engines.sim.core.errors import SimConfigError
from services.runtime.engines.sim.core.timing import LLAMA_3_1_8B_H100, TimingProfile


@dataclass(slots=True, frozen=True)
class SimConfig:
    """A simulated vLLM replica. Defaults: Llama-3.1-8B-like on one H100, vLLM-like limits."""

    model_name: str = "sim-llama-3.1-8b"
    block_size: int = 16
    num_blocks: int = 4096
    max_model_len: int = 8192
    max_num_seqs: int = 256
    # Token budget of one step (chunked prefill). vLLM v1's default for its API server.
    max_num_batched_tokens: int = 8192
    profile: TimingProfile = LLAMA_3_1_8B_H100
    # Real seconds per simulated second (0.01 = 100x faster). Only the adapter uses it.
    time_scale: float = 1.0
    # Seeds output tokens (with the prompt) and the step-time jitter.
    seed: int = 0
    vocab_size: int = 32000
    # Output token ids are drawn from [min_output_token_id, vocab_size): clear of special ids.
    min_output_token_id: int = 100
    # Simulated LoRA adapter load time, in simulated seconds.
    lora_load_s: float = 0.0
    # Block hashing: every replica of a fleet should share these, as vLLM replicas share
    # PYTHONHASHSEED, so a prefix has one hash fleet-wide.
    hash_seed: int = 0
    hash_function: HashFunction = blake2b_64
    # Record KV events; a benchmark that does not read them can turn them off.
    kv_events: bool = True

    def __post_init__(self) -> None:
        for name in ("block_size", "num_blocks", "max_model_len", "max_num_seqs"):
            _at_least(name, getattr(self, name), 1)
        _at_least("max_num_batched_tokens", self.max_num_batched_tokens, 1)
        _at_least("vocab_size", self.vocab_size, 2)
        if not 0 <= self.min_output_token_id < self.vocab_size:
            raise SimConfigError(
                "min_output_token_id", self.min_output_token_id, "must be in [0, vocab_size)"
            )
        if self.num_blocks * self.block_size < self.max_model_len:
            raise SimConfigError(
                "num_blocks",
                self.num_blocks,
                f"{self.num_blocks} blocks of {self.block_size} tokens cannot hold one sequence "
                f"of max_model_len {self.max_model_len}",
            )
        if not (self.time_scale > 0 and math.isfinite(self.time_scale)):
            raise SimConfigError("time_scale", self.time_scale, "must be a positive number")
        if not (self.lora_load_s >= 0 and math.isfinite(self.lora_load_s)):
            raise SimConfigError("lora_load_s", self.lora_load_s, "must be >= 0")


def _at_least(name: str, value: int, low: int) -> None:
    if not isinstance(value, int) or value < low:
        raise SimConfigError(name, value, f"must be an integer >= {low}")
