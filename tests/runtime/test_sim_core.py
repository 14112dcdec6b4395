"""`SimReplicaCore` in virtual time: prefix caching, eviction, KV events, batching, preemption."""

from __future__ import annotations

import itertools
import random

import pytest

from basalt.kvevents import BlockRemoved, BlockStored, KvEvent
from services.runtime.core.engine import FinishReason
from services.runtime.core.errors import InvalidRequest, PromptTooLong
from services.runtime.engines.sim.core.config import SimConfig
from services.runtime.engines.sim.core.errors import (
    DuplicateRequest,
    SimConfigError,
    TokenOutOfVocab,
)
from services.runtime.engines.sim.core.replica import FinishedRequest, SimReplicaCore, StepResult
from services.runtime.engines.sim.core.sequence import output_token_id, request_token_seed
from services.runtime.engines.sim.core.timing import TimingProfile, decode_time

BS = 4
# Decode cost depends on batch size only, so step times are easy to predict.
PROFILE = TimingProfile(
    name="test",
    step_overhead_s=0.0,
    prefill_s_per_token=1e-4,
    prefill_attn_s_per_token_pair=0.0,
    decode_table=((1, 0.010), (8, 0.012), (64, 0.030)),
    decode_s_per_context_token=0.0,
)


def _config(**kw: object) -> SimConfig:
    base: dict[str, object] = {
        "block_size": BS,
        "num_blocks": 256,
        "max_model_len": 256,
        "profile": PROFILE,
    }
    base.update(kw)
    return SimConfig(**base)  # type: ignore[arg-type]


def _prompt(seed: int, n: int) -> list[int]:
    return [(seed * 7919 + i * 31) % 4000 + 1 for i in range(n)]


class Run:
    """Steps a core to completion, collecting what a client and a KV index would see."""

    def __init__(self, core: SimReplicaCore, now: float = 0.0) -> None:
        self.core, self.now = core, now
        self.tokens: dict[str, list[int]] = {}
        self.finished: dict[str, FinishedRequest] = {}
        self.events: list[KvEvent] = []
        self.steps: list[StepResult] = []

    def step(self) -> StepResult:
        r = self.core.step(self.now)
        self.now = r.end
        for rid, tok in r.tokens.items():
            self.tokens.setdefault(rid, []).append(tok)
        self.finished.update((f.req_id, f) for f in r.finished)
        self.events += r.kv_events
        self.steps.append(r)
        return r

    def until_done(self) -> Run:
        while self.core.has_work:
            self.step()
        return self


def test_second_request_with_the_same_prefix_reuses_its_full_blocks() -> None:
    core = SimReplicaCore(_config())
    shared = _prompt(1, 5 * BS)
    core.add_request("a", shared + [7, 8, 9], max_tokens=4)
    run = Run(core).until_done()
    core.add_request("b", shared + [10, 11, 12], max_tokens=4, now=run.now)
    first_b_step = run.step()
    run.until_done()
    assert run.finished["a"].num_cached_tokens == 0
    assert run.finished["b"].num_cached_tokens == 5 * BS
    # Only the 3 uncached tokens were prefilled: the time to first token shows the hit.
    assert first_b_step.num_prefill_tokens == 3
    assert run.steps[0].num_prefill_tokens == 5 * BS + 3


def test_a_fully_cached_prompt_still_computes_its_last_token() -> None:
    core = SimReplicaCore(_config())
    prompt = _prompt(2, 4 * BS)
    core.add_request("a", prompt, max_tokens=2)
    run = Run(core).until_done()
    core.add_request("b", prompt, max_tokens=2, now=run.now)
    run.until_done()
    # As vLLM: the hit stops one token short, i.e. at the last full block before it.
    assert run.finished["b"].num_cached_tokens == 3 * BS
    assert run.tokens["b"] == run.tokens["a"]


def test_lora_adapters_do_not_share_cached_blocks() -> None:
    core = SimReplicaCore(_config())
    prompt = _prompt(3, 6 * BS + 1)
    core.add_request("base", prompt, max_tokens=1)
    run = Run(core).until_done()
    core.add_request("ad1", prompt, max_tokens=1, lora_name="ad1", now=run.now)
    run.until_done()
    core.add_request("ad1-again", prompt, max_tokens=1, lora_name="ad1", now=run.now)
    run.until_done()
    assert run.finished["ad1"].num_cached_tokens == 0
    assert run.finished["ad1-again"].num_cached_tokens == 6 * BS
    stored = [e for e in run.events if isinstance(e, BlockStored)]
    base_hashes = {h for e in stored if e.lora_name is None for h in e.block_hashes}
    lora_hashes = {h for e in stored if e.lora_name == "ad1" for h in e.block_hashes}
    assert len(base_hashes) == len(lora_hashes) == 6
    assert base_hashes.isdisjoint(lora_hashes)


def test_capacity_pressure_evicts_least_recently_used_blocks() -> None:
    core = SimReplicaCore(_config(num_blocks=8, max_model_len=32))
    prompts = {name: _prompt(i + 10, 4 * BS) for i, name in enumerate("abc")}
    run = Run(core)
    hashes: dict[str, list[int]] = {}
    for name, prompt in prompts.items():
        core.add_request(name, prompt, max_tokens=1, now=run.now)
        before = len(run.events)
        run.until_done()
        hashes[name] = [
            h for e in run.events[before:] if isinstance(e, BlockStored) for h in e.block_hashes
        ]
    removed = [h for e in run.events if isinstance(e, BlockRemoved) for h in e.block_hashes]
    # c needed 4 blocks; the 4 free ones with the oldest data were a's.
    assert sorted(removed) == sorted(hashes["a"])
    assert core.stats().kv_blocks_cached == 8
    core.add_request("b2", prompts["b"], max_tokens=1, now=run.now)
    run.until_done()
    core.add_request("a2", prompts["a"], max_tokens=1, now=run.now)
    run.until_done()
    assert run.finished["a2"].num_cached_tokens == 0  # evicted: no longer a hit
    assert run.finished["b2"].num_cached_tokens == 3 * BS


def test_stored_events_chain_from_prompt_blocks_to_decoded_blocks() -> None:
    core = SimReplicaCore(_config())
    prompt = _prompt(4, 2 * BS + 2)
    core.add_request("a", prompt, max_tokens=3 * BS)
    run = Run(core).until_done()
    stored = [e for e in run.events if isinstance(e, BlockStored)]
    assert stored[0].parent_block_hash is None
    assert stored[0].token_ids == prompt[: 2 * BS]
    for earlier, later in itertools.pairwise(stored):
        assert later.parent_block_hash == earlier.block_hashes[-1]
    # The third block holds the prompt's last 2 tokens and the first 2 generated ones.
    assert stored[1].token_ids == prompt[2 * BS :] + run.tokens["a"][:2]
    all_tokens = [t for e in stored for t in e.token_ids]
    assert all_tokens == (prompt + run.tokens["a"])[: len(all_tokens)]


def test_kv_state_matches_the_event_stream() -> None:
    core = SimReplicaCore(_config(num_blocks=12, max_model_len=48))
    run = Run(core)
    for i in range(6):
        core.add_request(f"r{i}", _prompt(i % 3, 3 * BS + i), max_tokens=6, now=run.now)
        run.step()
    run.until_done()
    live: set[int] = set()
    for e in run.events:
        if isinstance(e, BlockStored):
            live.update(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            live.difference_update(e.block_hashes)
    assert any(isinstance(e, BlockRemoved) for e in run.events)
    dump = core.kv_state()
    assert {h for e in dump for h in e.block_hashes} == live
    seen: set[int] = set()
    for e in dump:
        assert (
            e.parent_block_hash is None
            or e.parent_block_hash in seen
            or e.parent_block_hash not in live
        )
        seen.update(e.block_hashes)


def test_output_tokens_are_a_pure_function_of_seed_prompt_and_position() -> None:
    prompt = _prompt(5, 37)
    runs = []
    for _ in range(2):
        core = SimReplicaCore(_config(seed=42, vocab_size=5000, min_output_token_id=10))
        core.add_request("x", prompt, max_tokens=20)
        runs.append(Run(core).until_done().tokens["x"])
    assert runs[0] == runs[1]
    assert all(10 <= t < 5000 for t in runs[0])
    seed = request_token_seed(42, prompt)
    assert runs[0] == [output_token_id(seed, 37 + i, 10, 4990) for i in range(20)]
    other = SimReplicaCore(_config(seed=43, vocab_size=5000))
    other.add_request("x", prompt, max_tokens=20)
    assert Run(other).until_done().tokens["x"] != runs[0]


def test_tokens_do_not_depend_on_batching() -> None:
    prompt = _prompt(6, 20)
    alone = SimReplicaCore(_config())
    alone.add_request("x", prompt, max_tokens=30)
    busy = SimReplicaCore(_config())
    for i in range(10):
        busy.add_request(f"n{i}", _prompt(100 + i, 25), max_tokens=30)
    busy.add_request("x", prompt, max_tokens=30)
    assert Run(alone).until_done().tokens["x"] == Run(busy).until_done().tokens["x"]


def test_decode_step_time_grows_with_batch_size_per_the_profile() -> None:
    durations = {}
    for n in (1, 8, 32):
        core = SimReplicaCore(_config())
        for i in range(n):
            core.add_request(f"r{i}", _prompt(i, BS), max_tokens=10)
        run = Run(core)
        run.step()  # prefill of all n
        decode = run.step()
        assert decode.num_decode_seqs == n and decode.num_prefill_tokens == 0
        durations[n] = decode.duration
        assert decode.duration == pytest.approx(decode_time(PROFILE, n))
    assert durations[1] < durations[8] < durations[32]


def test_a_request_arriving_mid_flight_joins_the_running_batch() -> None:
    core = SimReplicaCore(_config())
    core.add_request("a", _prompt(1, 10), max_tokens=50)
    run = Run(core)
    for _ in range(5):
        run.step()
    core.add_request("b", _prompt(2, 12), max_tokens=5, now=run.now)
    joined = run.step()
    assert set(joined.tokens) == {"a", "b"}  # b's prefill ran alongside a's decode
    assert (joined.num_decode_seqs, joined.num_prefill_tokens) == (1, 12)
    assert joined.duration == pytest.approx(decode_time(PROFILE, 1) + 12 * 1e-4)
    assert run.step().num_decode_seqs == 2
    run.until_done()
    assert run.finished["b"].finish_time < run.finished["a"].finish_time
    assert run.finished["b"].first_token_time == joined.end


def test_long_prompts_are_prefilled_in_chunks_of_the_token_budget() -> None:
    core = SimReplicaCore(_config(max_num_batched_tokens=16))
    core.add_request("a", _prompt(1, 6), max_tokens=20)
    run = Run(core)
    run.step()
    core.add_request("long", _prompt(2, 40), max_tokens=2, now=run.now)
    chunks = [run.step() for _ in range(3)]
    assert [c.num_prefill_tokens for c in chunks] == [15, 15, 10]  # 16 minus a's decode token
    assert all(c.num_decode_seqs == 1 for c in chunks)  # a kept decoding meanwhile
    assert "long" not in chunks[0].tokens and "long" in chunks[2].tokens


def test_max_num_seqs_caps_the_running_batch() -> None:
    core = SimReplicaCore(_config(max_num_seqs=2))
    for i in range(3):
        core.add_request(f"r{i}", _prompt(i, 5), max_tokens=3)
    Run(core).step()
    assert (core.stats().num_running, core.stats().num_waiting) == (2, 1)


def test_newest_request_is_preempted_when_blocks_run_out() -> None:
    core = SimReplicaCore(_config(num_blocks=10, max_model_len=40))
    core.add_request("old", _prompt(1, 12), max_tokens=20)
    core.add_request("new", _prompt(2, 12), max_tokens=20)
    run = Run(core).until_done()
    preempted = [rid for s in run.steps for rid in s.preempted]
    assert preempted and set(preempted) == {"new"}
    assert run.finished["new"].num_preemptions >= 1
    assert run.finished["old"].num_preemptions == 0
    assert len(run.tokens["new"]) == len(run.tokens["old"]) == 20
    # Recompute does not change what the client gets.
    calm = SimReplicaCore(_config())
    calm.add_request("new", _prompt(2, 12), max_tokens=20)
    assert Run(calm).until_done().tokens["new"] == run.tokens["new"]
    assert core.stats().kv_blocks_active == 0


def test_abort_frees_blocks_of_running_and_waiting_requests() -> None:
    core = SimReplicaCore(_config(max_num_seqs=1))
    core.add_request("run", _prompt(1, 30), max_tokens=100)
    core.add_request("wait", _prompt(2, 30), max_tokens=100)
    run = Run(core)
    run.step()
    run.step()
    assert core.stats().kv_blocks_active == 8
    gone = core.abort("run")
    assert gone is not None and gone.finish_reason is FinishReason.ABORT
    assert gone.completion_tokens == 2
    assert core.abort("wait") is not None
    assert core.abort("never") is None
    assert core.stats().kv_blocks_active == 0
    assert not core.has_work


def test_stop_token_finishes_the_request() -> None:
    prompt = _prompt(7, 9)
    seed = request_token_seed(0, prompt)
    stop = output_token_id(seed, 9 + 4, 100, 32000 - 100)  # the 5th generated token
    core = SimReplicaCore(_config())
    core.add_request("s", prompt, max_tokens=50, stop_token_ids=[stop])
    run = Run(core).until_done()
    fin = run.finished["s"]
    assert fin.finish_reason is FinishReason.STOP
    assert run.tokens["s"][-1] == stop
    assert fin.completion_tokens == len(run.tokens["s"]) <= 5


def test_bad_requests_are_refused_with_their_reason() -> None:
    core = SimReplicaCore(_config(vocab_size=1000))
    with pytest.raises(InvalidRequest, match="empty"):
        core.add_request("e", [], max_tokens=1)
    with pytest.raises(PromptTooLong) as too_long:
        core.add_request("l", [1] * 200, max_tokens=57)
    assert (too_long.value.prompt_tokens, too_long.value.max_model_len) == (200, 256)
    with pytest.raises(TokenOutOfVocab, match="vocab") as vocab:
        core.add_request("v", [1, 2, 1000], max_tokens=1)
    assert (vocab.value.token_id, vocab.value.position) == (1000, 2)
    core.add_request("d", [1], max_tokens=1)
    with pytest.raises(DuplicateRequest):
        core.add_request("d", [1], max_tokens=1)
    assert core.stats().num_waiting == 1


def test_steps_cannot_overlap_in_virtual_time() -> None:
    core = SimReplicaCore(_config())
    core.add_request("a", _prompt(1, 8), max_tokens=5)
    r = core.step(10.0)
    with pytest.raises(ValueError, match="before the previous step ends"):
        core.step(r.end - 0.001)


def test_a_pool_too_small_for_one_sequence_is_refused() -> None:
    with pytest.raises(SimConfigError) as err:
        SimConfig(block_size=16, num_blocks=10, max_model_len=8192)
    assert err.value.field == "num_blocks"


def test_random_workload_keeps_blocks_events_and_tokens_consistent() -> None:
    rng = random.Random(3)
    core = SimReplicaCore(
        _config(num_blocks=40, max_model_len=160, max_num_seqs=6, max_num_batched_tokens=32)
    )
    run = Run(core)
    prefixes = [_prompt(p, 3 * BS) for p in range(4)]
    asked: dict[str, tuple[list[int], int]] = {}
    aborted: set[str] = set()
    for i in range(120):
        if rng.random() < 0.6:
            prompt = rng.choice(prefixes)[: rng.randrange(1, 3 * BS)] + _prompt(
                1000 + i, rng.randrange(1, 20)
            )
            max_tokens = rng.randrange(1, 40)
            lora = rng.choice([None, None, "ad1"])
            core.add_request(f"r{i}", prompt, max_tokens, lora_name=lora, now=run.now)
            asked[f"r{i}"] = (prompt, max_tokens)
        if rng.random() < 0.05 and asked:
            victim = rng.choice(sorted(asked))
            if core.abort(victim) is not None:
                aborted.add(victim)
        if core.has_work:
            run.step()
    run.until_done()
    stats = core.stats()
    assert (stats.kv_blocks_active, stats.num_running, stats.num_waiting) == (0, 0, 0)
    assert stats.num_preemptions > 0  # the pool was small enough to force some
    live: set[int] = set()
    for e in run.events:
        if isinstance(e, BlockStored):
            assert not live & set(e.block_hashes), "a hash was stored twice without removal"
            live.update(e.block_hashes)
        elif isinstance(e, BlockRemoved):
            assert set(e.block_hashes) <= live, "removed a hash that was not stored"
            live.difference_update(e.block_hashes)
    assert {h for e in core.kv_state() for h in e.block_hashes} == live
    assert stats.kv_blocks_cached == stats.kv_blocks_cached_free == len(live)
    for rid, (prompt, max_tokens) in asked.items():
        if rid in aborted:
            continue
        seed = request_token_seed(0, prompt)
        expected = [output_token_id(seed, len(prompt) + k, 100, 31900) for k in range(max_tokens)]
        assert run.tokens[rid] == expected
        assert run.finished[rid].completion_tokens == max_tokens
