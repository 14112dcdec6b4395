"""Step-time model of the vLLM simulator: a pure calculator over a profile (no I/O, no clock).

One engine step runs the prefill chunks and decode tokens the scheduler picked. Its time is

    step_overhead_s
  + prefill_s_per_token          * (uncached prompt tokens computed this step)
  + prefill_attn_s_per_token_pair * (query-key pairs of those tokens: causal attention)
  + decode_table(batch)          (piecewise-linear in the number of decoding sequences)
  + decode_s_per_context_token   * (context tokens whose KV the decode tokens read)

and, when the profile has `jitter_sigma` > 0, it is multiplied by a mean-one log-normal factor
drawn from a `random.Random` the caller passes in (seeded, so runs repeat).

The default profile, `LLAMA_3_1_8B_H100`: Llama-3.1-8B in bf16 on one H100 SXM 80GB under
vLLM (v1 engine, CUDA graphs). APPROXIMATE (think +-30%), derived, not measured here:
- Model: 8.03e9 parameters (16.06 GB of bf16 weights, 16.06 GFLOP per token), 32 layers,
  32 query / 8 KV heads of dim 128, so 128 KiB of bf16 KV per token.
- GPU: NVIDIA's H100 SXM datasheet, 3.35 TB/s HBM3 and 989 TFLOP/s dense bf16.
- Decode at batch 1 is weight-bandwidth bound: 16.06 GB / 3.35 TB/s = 4.8 ms at peak. A public
  sweep of vLLM with this model (johnmusgrave.com, "vLLM throughput-latency sweep on NVIDIA
  A100", 1024 in / 128 out) measured ~75 tok/s at concurrency 1 on an A100-40GB, ~77% of its
  bandwidth roofline; the same efficiency on an H100 gives ~6 ms per token (~165 tok/s), which
  is what this profile yields at a 1k context (0.8 ms overhead + 5.2 ms + 0.05 ms of KV).
- Decode cost grows slowly with batch until the GEMMs turn compute bound (arithmetic intensity
  ~ batch; H100 ridge ~300): the table rises from 5.2 ms (batch 1) to ~10 ms (256) and ~17 ms
  (512), assuming ~60% of peak for the GEMMs at large batch.
- KV reads: 128 KiB per context token at ~80% of 3.35 TB/s, about 5e-8 s per token; at batch
  256 with 1k-token contexts that is ~13 ms, so a full step is ~24 ms (~10k output tok/s).
- Prefill is compute bound: 16.06 GFLOP per token at ~55% MFU (~540 TFLOP/s) = ~30 us per token
  (a 1k-token prompt alone: ~31 ms to first token). Causal attention adds 4 * 32 layers *
  4096 = 524k FLOP per query-key pair at ~40% of peak: ~1.3e-9 s per pair (~43 ms more for an
  8k prompt).
- Cross-check: Dynamo's mocker (ai-dynamo/dynamo, lib/llm/src/mocker/scheduler.rs) uses a
  decode time of 19-58 ms by KV usage and calls its formula "not scientific"; vLLM's v0.6.0
  blog (Sep 2024) reports 5x lower TPOT than v0.5.3 for Llama 8B on one H100 by cutting CPU
  overhead, which the small `step_overhead_s` here reflects.

Public API:
    TimingProfile(...)                          a profile (frozen dataclass)
    LLAMA_3_1_8B_H100                           the default profile
    StepLoad(prefill_tokens, prefill_attention_pairs, decode_seqs, decode_context_tokens)
    decode_time(profile, batch_size) -> float
    step_duration(profile, load) -> float       seconds, no jitter
    jittered(duration, sigma, rng) -> float
"""

from __future__ import annotations

import math
from bisect import bisect_left
from dataclasses import dataclass
from random import Random


@dataclass(slots=True, frozen=True)
class TimingProfile:
    """Costs of one engine step, in seconds. `decode_table` is ((batch size, seconds), ...)."""

    name: str
    step_overhead_s: float
    prefill_s_per_token: float
    prefill_attn_s_per_token_pair: float
    decode_table: tuple[tuple[int, float], ...]
    decode_s_per_context_token: float
    jitter_sigma: float = 0.0

    def __post_init__(self) -> None:
        sizes = [b for b, _ in self.decode_table]
        if not sizes or sizes[0] < 1 or sizes != sorted(set(sizes)):
            raise ValueError(
                f"profile {self.name!r}: decode_table needs strictly increasing batch sizes "
                f">= 1, got {sizes}"
            )
        costs = (
            self.step_overhead_s,
            self.prefill_s_per_token,
            self.prefill_attn_s_per_token_pair,
            self.decode_s_per_context_token,
            self.jitter_sigma,
            *(t for _, t in self.decode_table),
        )
        if any(c < 0 or not math.isfinite(c) for c in costs):
            raise ValueError(f"profile {self.name!r}: costs must be finite and >= 0")


LLAMA_3_1_8B_H100 = TimingProfile(
    name="llama-3.1-8b-bf16-h100",
    step_overhead_s=0.8e-3,
    prefill_s_per_token=30e-6,
    prefill_attn_s_per_token_pair=1.3e-9,
    decode_table=(
        (1, 5.2e-3),
        (16, 5.4e-3),
        (32, 5.6e-3),
        (64, 6.0e-3),
        (128, 7.2e-3),
        (256, 10.0e-3),
        (512, 17.0e-3),
    ),
    decode_s_per_context_token=5.0e-8,
)


@dataclass(slots=True)
class StepLoad:
    """What one step computes, as the timing model sees it."""

    prefill_tokens: int = 0
    prefill_attention_pairs: int = 0
    decode_seqs: int = 0
    decode_context_tokens: int = 0

    @property
    def is_empty(self) -> bool:
        return self.prefill_tokens == 0 and self.decode_seqs == 0


def decode_time(profile: TimingProfile, batch_size: int) -> float:
    """Decode part of a step for `batch_size` sequences: linear between table points, the first
    point's value below it, the last segment's slope beyond the end; 0 for no sequences."""
    if batch_size <= 0:
        return 0.0
    table = profile.decode_table
    if batch_size <= table[0][0]:
        return table[0][1]
    i = bisect_left(table, (batch_size, -math.inf))
    if i == len(table):
        i -= 1  # extrapolate along the last segment
    if len(table) == 1:
        return table[0][1]
    (b0, t0), (b1, t1) = table[i - 1], table[i]
    return t0 + (t1 - t0) * (batch_size - b0) / (b1 - b0)


def step_duration(profile: TimingProfile, load: StepLoad) -> float:
    """Seconds one step takes for `load` (0 for an empty step), before jitter."""
    if load.is_empty:
        return 0.0
    return (
        profile.step_overhead_s
        + profile.prefill_s_per_token * load.prefill_tokens
        + profile.prefill_attn_s_per_token_pair * load.prefill_attention_pairs
        + decode_time(profile, load.decode_seqs)
        + profile.decode_s_per_context_token * load.decode_context_tokens
    )


def jittered(duration: float, sigma: float, rng: Random) -> float:
    """`duration` times a log-normal factor with mean 1 (sigma of its log); as is for sigma 0."""
    if sigma <= 0.0 or duration <= 0.0:
        return duration
    return duration * math.exp(rng.gauss(-0.5 * sigma * sigma, sigma))


def attention_pairs(start: int, num_tokens: int) -> int:
    """Causal query-key pairs when tokens at positions start..start+num_tokens-1 are computed."""
    return num_tokens * start + num_tokens * (num_tokens + 1) // 2
