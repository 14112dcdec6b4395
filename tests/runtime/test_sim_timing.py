"""The simulator's step-time model: profile table, prefill and decode costs, seeded jitter."""

from __future__ import annotations

import random
import statistics

import pytest

from services.runtime.engines.sim.core.timing import (
    LLAMA_3_1_8B_H100,
    StepLoad,
    TimingProfile,
    attention_pairs,
    decode_time,
    jittered,
    step_duration,
)

FLAT = TimingProfile(
    name="test",
    step_overhead_s=0.001,
    prefill_s_per_token=1e-5,
    prefill_attn_s_per_token_pair=0.0,
    decode_table=((1, 0.010), (10, 0.020), (20, 0.040)),
    decode_s_per_context_token=0.0,
)


def test_decode_time_is_piecewise_linear_in_batch_size() -> None:
    assert decode_time(FLAT, 0) == 0.0
    assert decode_time(FLAT, 1) == pytest.approx(0.010)
    assert decode_time(FLAT, 10) == pytest.approx(0.020)
    assert decode_time(FLAT, 15) == pytest.approx(0.030)
    assert decode_time(FLAT, 30) == pytest.approx(0.060)  # beyond the table: last slope


def test_step_cost_counts_only_the_tokens_computed() -> None:
    empty = step_duration(FLAT, StepLoad())
    short = step_duration(FLAT, StepLoad(prefill_tokens=100))
    long = step_duration(FLAT, StepLoad(prefill_tokens=1000))
    assert empty == 0.0
    assert short == pytest.approx(0.001 + 100 * 1e-5)
    assert long - short == pytest.approx(900 * 1e-5)
    mixed = step_duration(FLAT, StepLoad(prefill_tokens=100, decode_seqs=10))
    assert mixed == pytest.approx(short + 0.020)


def test_attention_pairs_count_causal_query_key_pairs() -> None:
    assert attention_pairs(0, 3) == 1 + 2 + 3
    assert attention_pairs(10, 2) == 11 + 12


def test_jitter_repeats_with_the_seed_and_keeps_the_mean() -> None:
    a = [jittered(0.01, 0.2, r) for r in [random.Random(5)] for _ in range(2000)]
    b = [jittered(0.01, 0.2, r) for r in [random.Random(5)] for _ in range(2000)]
    assert a == b
    assert len(set(a)) > 1000
    assert statistics.fmean(a) == pytest.approx(0.01, rel=0.03)
    assert jittered(0.01, 0.0, random.Random(1)) == 0.01


def test_default_profile_is_an_8b_model_on_one_h100() -> None:
    p = LLAMA_3_1_8B_H100
    single = step_duration(p, StepLoad(decode_seqs=1, decode_context_tokens=1024))
    assert 140 < 1 / single < 200  # tokens/s of one stream, ~165 in public measurements
    full = step_duration(p, StepLoad(decode_seqs=256, decode_context_tokens=256 * 1024))
    assert 8_000 < 256 / full < 14_000  # output tokens/s at a full batch
    ttft_1k = step_duration(
        p, StepLoad(prefill_tokens=1024, prefill_attention_pairs=attention_pairs(0, 1024))
    )
    assert 0.02 < ttft_1k < 0.05


def test_bad_profiles_are_refused() -> None:
    with pytest.raises(ValueError, match="increasing"):
        TimingProfile("x", 0, 0, 0, ((4, 0.1), (2, 0.2)), 0)
    with pytest.raises(ValueError, match="finite"):
        TimingProfile("x", -1.0, 0, 0, ((1, 0.1),), 0)
