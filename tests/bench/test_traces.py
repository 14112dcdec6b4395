"""Benchmark traces: the seeded multi-turn chat generator and the Mooncake parser."""

from __future__ import annotations

import itertools
import json
from collections import defaultdict
from pathlib import Path

import pytest

from bench.traces import (
    ChatWorkload,
    TraceFormatError,
    limit_and_scale,
    load_mooncake,
    sim_completion,
    synthetic_chat,
)

SMALL = ChatWorkload(conversations=20, rate=2.0, think_s=5.0, seed=3)


def _key(trace):
    return [(r.arrival_s, r.prompt.tobytes(), r.output_tokens, r.session_id) for r in trace.requests]


def test_synthetic_chat_is_deterministic_for_a_seed_and_varies_with_it():
    assert _key(synthetic_chat(SMALL)) == _key(synthetic_chat(SMALL))
    other = ChatWorkload(conversations=20, rate=2.0, think_s=5.0, seed=4)
    assert _key(synthetic_chat(other)) != _key(synthetic_chat(SMALL))


def test_each_turn_extends_the_previous_prompt_and_the_simulators_answer():
    trace = synthetic_chat(SMALL)
    turns = defaultdict(list)
    for r in trace.requests:
        turns[r.session_id].append(r)
    assert len(turns) == SMALL.conversations
    grew = 0
    for conv in turns.values():
        for prev, nxt in itertools.pairwise(conv):
            answer = sim_completion(prev.prompt, prev.output_tokens, 0, 100, 32_000)
            expected = prev.prompt + answer
            assert nxt.prompt[: len(expected)] == expected
            assert len(nxt.prompt) > len(expected)  # plus a new user message
            assert nxt.arrival_s >= prev.arrival_s
            grew += 1
    assert grew > SMALL.conversations  # conversations do have several turns
    arrivals = [r.arrival_s for r in trace.requests]
    assert arrivals == sorted(arrivals)


def test_conversations_share_a_few_system_prompts():
    w = ChatWorkload(conversations=30, system_prompts=2, system_tokens=400, seed=1)
    firsts = {}
    for r in synthetic_chat(w).requests:
        firsts.setdefault(r.session_id, r.prompt)
    heads = {bytes(p[:100].tobytes()) for p in firsts.values()}
    assert len(heads) == 2


def _write(path: Path, rows: list[dict]) -> Path:
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    return path


def test_mooncake_rows_become_prompts_that_share_exactly_their_common_hash_ids(tmp_path):
    path = _write(tmp_path / "t.jsonl", [
        {"timestamp": 1500, "input_length": 1100, "output_length": 7, "hash_ids": [0, 1, 5]},
        {"timestamp": 0, "input_length": 1024, "output_length": 3, "hash_ids": [0, 1]},
        {"timestamp": 900, "input_length": 600, "output_length": 2, "hash_ids": [0, 9]},
    ])
    trace = load_mooncake(path)
    assert trace.name == "t.jsonl"
    assert [r.arrival_s for r in trace.requests] == [0.0, 0.9, 1.5]
    a, b, c = trace.requests
    assert [len(r.prompt) for r in trace.requests] == [1024, 600, 1100]  # last block partial
    assert [r.output_tokens for r in trace.requests] == [3, 2, 7]
    assert c.prompt[:1024] == a.prompt  # same ids 0, 1: same 1,024 tokens
    assert b.prompt[:512] == a.prompt[:512] and b.prompt[512:] != a.prompt[512:600]
    assert all(100 <= t < 32_000 for t in c.prompt)


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ({"timestamp": 0, "input_length": 10, "output_length": 1}, "missing 'hash_ids'"),
        ({"timestamp": 0, "input_length": 600, "output_length": 1, "hash_ids": [1]}, "needs 2"),
        ({"timestamp": 0, "input_length": 0, "output_length": 1, "hash_ids": []}, "input_length"),
    ],
)
def test_a_bad_mooncake_line_is_named(tmp_path, row, reason):
    ok = {"timestamp": 0, "input_length": 10, "output_length": 1, "hash_ids": [1]}
    path = _write(tmp_path / "bad.jsonl", [ok, row])
    with pytest.raises(TraceFormatError, match=reason) as info:
        load_mooncake(path)
    assert info.value.line == 2


def test_limit_and_rate_scale_compress_the_trace():
    trace = synthetic_chat(SMALL)
    fast = limit_and_scale(trace, limit=10, rate_scale=4.0)
    assert len(fast.requests) == 10
    assert [r.arrival_s * 4 for r in fast.requests] == pytest.approx(
        [r.arrival_s for r in trace.requests[:10]]
    )
    with pytest.raises(ValueError, match="rate_scale"):
        limit_and_scale(trace, rate_scale=0)


def test_a_byte_vocab_workload_stays_inside_its_vocabulary():
    w = ChatWorkload(conversations=5, prompt_token_lo=3, vocab_size=259, seed=5)
    for r in synthetic_chat(w).requests:
        assert 3 <= min(r.prompt) and max(r.prompt) < 259
