"""PrefixIndex: what the router learns from KV events, and what `match` answers."""

from __future__ import annotations

import hashlib
import random
from itertools import pairwise

import pytest

from basalt.ids import ReplicaId
from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatchData
from services.router.core import index_tables
from services.router.core.hashing import block_hashes
from services.router.core.index import PrefixIndex
from services.router.core.types import OwnBlockHash

BS = 4
R1, R2 = ReplicaId("r1"), ReplicaId("r2")
PROMPT = list(range(100, 124))  # 6 blocks of 4
OTHER = list(range(500, 524))


class FakeEngine:
    """Publishes vLLM-style BlockStored events with its own (salted) engine hash."""

    def __init__(self, salt: bytes) -> None:
        self.salt = salt

    def hashes(self, tokens: list[int], lora: str | None = None, extra: bytes = b"") -> list[int]:
        out, parent = [], 0
        for i in range(0, len(tokens) - BS + 1, BS):
            data = repr((parent, tokens[i : i + BS], lora)).encode() + self.salt + extra
            parent = int.from_bytes(hashlib.sha256(data).digest()[:8], "little")
            out.append(parent)
        return out

    def stored(
        self, tokens: list[int], first: int, last: int, lora: str | None = None, extra: bytes = b""
    ) -> BlockStored:
        """BlockStored for blocks first..last-1 of `tokens`, chained to block first-1."""
        hashes = self.hashes(tokens, lora, extra)
        parent = hashes[first - 1] if first > 0 else None
        return BlockStored(hashes[first:last], parent, tokens[first * BS : last * BS], BS, lora)


A, B = FakeEngine(b"engine-a"), FakeEngine(b"engine-b")


def batch(replica: str, seq: int, *events: object, epoch: str = "e1") -> KvEventBatchData:
    return KvEventBatchData(replica, seq, 0.0, epoch, list(events))  # type: ignore[arg-type]


def own(tokens: list[int], lora: str | None = None) -> list[OwnBlockHash]:
    return block_hashes(tokens, BS, lora)


def flagged_open(index: PrefixIndex) -> set[str]:
    """The replicas `match` walks rather than bisects (may hold a block without its parent)."""
    return {r for r in index.replicas() if index._open >> index._replicas[r].slot & 1}


def test_stored_blocks_are_matched_as_a_leading_prefix() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 4)))
    assert index.match(own(PROMPT)) == {R1: 4}
    assert index.match(own(PROMPT[:8])) == {R1: 2}
    assert index.match(own(OTHER)) == {}
    assert index.match([]) == {}


def test_a_parent_in_an_earlier_batch_chains_the_next_blocks() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 2)))
    result = index.apply(batch("r1", 1, A.stored(PROMPT, 2, 3), A.stored(PROMPT, 3, 6)))
    assert result.stored_blocks == 4 and not result.need_dump
    assert index.match(own(PROMPT)) == {R1: 6}


def test_match_stops_at_the_first_missing_block() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 1, BlockRemoved([A.hashes(PROMPT)[2]])))
    assert index.match(own(PROMPT)) == {R1: 2}
    index.apply(batch("r1", 2, BlockRemoved([A.hashes(PROMPT)[0]])))
    assert index.match(own(PROMPT)) == {}


def test_a_refilled_hole_counts_again() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 1, BlockRemoved([A.hashes(PROMPT)[3]])))
    assert index.match(own(PROMPT)) == {R1: 3, R2: 6}
    assert index.stats().open_replicas == 1  # r1 holds blocks 4-5 without their parent
    index.apply(batch("r1", 2, A.stored(PROMPT, 3, 4)))
    assert index.match(own(PROMPT)) == {R1: 6, R2: 6}
    assert index.stats().open_replicas == 0


def test_each_replica_gets_its_own_depth() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 3)))
    index.apply(batch("r3", 0, A.stored(OTHER, 0, 6)))
    assert index.match(own(PROMPT)) == {R1: 6, R2: 3}


def test_engines_with_different_hash_functions_meet_on_the_same_blocks() -> None:
    assert A.hashes(PROMPT) != B.hashes(PROMPT)
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 3), A.stored(PROMPT, 3, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 1), B.stored(PROMPT, 1, 6)))
    assert index.match(own(PROMPT)) == {R1: 6, R2: 6}
    assert index.stats().distinct_hashes == 6
    assert index.stats().blocks == 12


def test_blocks_stored_under_a_lora_match_only_that_lora() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6, lora="sql")))
    assert index.match(own(PROMPT, "sql")) == {R1: 6}
    assert index.match(own(PROMPT)) == {}
    assert index.match(own(PROMPT, "chat")) == {}


def test_all_blocks_cleared_drops_only_that_replica() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 1, AllBlocksCleared()))
    assert index.match(own(PROMPT)) == {R2: 6}
    assert index.stats().blocks == 6


def test_a_block_whose_parent_is_unknown_is_skipped_and_counted() -> None:
    index = PrefixIndex()
    result = index.apply(batch("r1", 0, A.stored(PROMPT, 2, 6)))
    assert result.skipped_blocks == 4 and result.stored_blocks == 0
    assert index.stats().skipped_blocks == 4 and index.stats().skipped_events == 1
    assert index.match(own(PROMPT)) == {}


def test_removing_an_unknown_block_changes_nothing() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 1, BlockRemoved([12345])))
    assert index.match(own(PROMPT)) == {R1: 6}
    assert index.stats().unknown_removals == 1


def test_one_block_under_two_engine_hashes_survives_removing_one() -> None:
    # Same tokens, different engine-side extra keys (e.g. a cache salt): one own hash.
    index = PrefixIndex()
    plain, salted = A.stored(PROMPT, 0, 6), A.stored(PROMPT, 0, 6, extra=b"salt")
    index.apply(batch("r1", 0, plain, salted))
    index.apply(batch("r1", 1, BlockRemoved(salted.block_hashes)))
    assert index.match(own(PROMPT)) == {R1: 6}
    index.apply(batch("r1", 2, BlockRemoved(plain.block_hashes)))
    assert index.match(own(PROMPT)) == {}
    assert index.stats().blocks == 0 and index.stats().distinct_hashes == 0


def test_a_seq_gap_asks_for_a_dump_and_keeps_what_it_can_chain() -> None:
    index = PrefixIndex()
    assert not index.apply(batch("r1", 0, A.stored(PROMPT, 0, 2))).need_dump
    result = index.apply(batch("r1", 5, A.stored(PROMPT, 2, 6)))
    assert result.need_dump and not result.reset
    assert index.match(own(PROMPT)) == {R1: 6}
    # Still wanted on the next batches (the adapter's dump may have failed), asked once.
    assert index.apply(batch("r1", 6)).need_dump
    assert index.stats().dumps_requested == 1
    index.apply_dump(R1, "e1", 6, [A.stored(PROMPT, 0, 6)])
    assert not index.apply(batch("r1", 7)).need_dump


def test_first_batch_seen_mid_stream_asks_for_a_dump() -> None:
    index = PrefixIndex()
    assert index.apply(batch("r1", 41, A.stored(PROMPT, 0, 6))).need_dump
    assert not index.apply(batch("r2", 0, B.stored(PROMPT, 0, 6))).need_dump


def test_a_new_epoch_drops_the_replicas_old_entries() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 1, A.stored(OTHER, 0, 6)))
    result = index.apply(batch("r1", 0, A.stored(OTHER, 0, 2), epoch="e2"))
    assert result.reset and not result.need_dump
    assert index.match(own(PROMPT)) == {}
    assert index.match(own(OTHER)) == {R1: 2}
    assert index.seq_of(R1) == ("e2", 0)


def test_seq_going_backwards_resets_and_asks_for_a_dump() -> None:
    index = PrefixIndex()
    for seq in range(4):
        index.apply(batch("r1", seq, A.stored(PROMPT, seq, seq + 1)))
    result = index.apply(batch("r1", 2, A.stored(OTHER, 0, 1)))
    assert result.reset and result.need_dump
    assert index.match(own(PROMPT)) == {}
    assert index.match(own(OTHER)) == {R1: 1}


def test_a_repeated_batch_is_ignored() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    result = index.apply(batch("r1", 0, AllBlocksCleared()))
    assert result.stale
    assert index.match(own(PROMPT)) == {R1: 6}


def test_a_dump_replaces_entries_and_older_batches_are_then_ignored() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r1", 3, A.stored(OTHER, 0, 1)))  # gap: the adapter fetches a dump
    dump = [A.stored(OTHER, 0, 3), A.stored(OTHER, 3, 4)]
    index.apply_dump(R1, "e1", 5, dump)
    assert index.match(own(PROMPT)) == {}
    assert index.match(own(OTHER)) == {R1: 4}
    # Batches 4 and 5 were in flight while the dump was taken: already in it.
    assert index.apply(batch("r1", 4, AllBlocksCleared())).stale
    assert index.apply(batch("r1", 5, AllBlocksCleared())).stale
    assert index.match(own(OTHER)) == {R1: 4}
    result = index.apply(batch("r1", 6, A.stored(OTHER, 4, 6)))
    assert not result.need_dump and not result.stale
    assert index.match(own(OTHER)) == {R1: 6}


def test_a_dump_for_an_unknown_replica_registers_it() -> None:
    index = PrefixIndex()
    index.apply_dump(R2, "e9", 12, [B.stored(PROMPT, 0, 6)])
    assert index.match(own(PROMPT)) == {R2: 6}
    assert not index.apply(batch("r2", 13, epoch="e9")).need_dump


def test_a_removed_replica_is_forgotten_and_its_slot_starts_empty() -> None:
    index = PrefixIndex()
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 6)))
    assert index.remove_replica(R1)
    assert not index.remove_replica(R1)
    assert index.match(own(PROMPT)) == {R2: 6}
    index.apply(batch("r3", 0, A.stored(OTHER, 0, 6)))  # takes r1's freed slot
    assert index.match(own(PROMPT)) == {R2: 6}
    assert index.match(own(OTHER)) == {ReplicaId("r3"): 6}
    assert sorted(index.replicas()) == [R2, ReplicaId("r3")]


def test_two_indexes_fed_the_same_events_answer_the_same() -> None:
    batches = [
        batch("r1", 0, A.stored(PROMPT, 0, 6)),
        batch("r2", 0, B.stored(PROMPT, 0, 3)),
        batch("r1", 1, BlockRemoved([A.hashes(PROMPT)[4]])),
    ]
    first, second = PrefixIndex(), PrefixIndex()
    for b in batches:
        first.apply(b)
        second.apply(b)
    assert first.match(own(PROMPT)) == second.match(own(PROMPT)) == {R1: 4, R2: 3}


def test_stats_count_blocks_replicas_and_memory() -> None:
    index = PrefixIndex()
    empty = index.stats().memory_bytes
    index.apply(batch("r1", 0, A.stored(PROMPT, 0, 6)))
    index.apply(batch("r2", 0, B.stored(PROMPT, 0, 6), B.stored(OTHER, 0, 6)))
    stats = index.stats()
    assert (stats.replicas, stats.blocks, stats.distinct_hashes) == (2, 18, 12)
    assert stats.memory_bytes > empty


def test_random_event_streams_match_a_plain_model() -> None:
    """Against a dict-of-sets model, over many replicas (multi-bit masks beyond small ints)."""
    rng = random.Random(5)
    base = [rng.randrange(1000) for _ in range(12)]
    seqs = [
        base[: 4 * rng.randrange(0, 3)] + [rng.randrange(1000) for _ in range(32)] for _ in range(6)
    ]
    engines = {f"r{i}": FakeEngine(f"engine-{i % 3}".encode()) for i in range(12)}
    held: dict[str, dict[int, OwnBlockHash]] = {r: {} for r in engines}  # engine -> own
    index, seqno = PrefixIndex(), dict.fromkeys(engines, 0)
    open_counts: set[int] = set()
    flagged_counts: set[int] = set()
    for _ in range(600):
        r = rng.choice(list(engines))
        engine, tokens = engines[r], rng.choice(seqs)
        hashes, owns = engine.hashes(tokens), own(tokens)
        roll = rng.random()
        if roll < 0.55:
            starts = [i for i in range(len(hashes)) if i == 0 or hashes[i - 1] in held[r]]
            first = rng.choice(starts)
            last = rng.randrange(first + 1, len(hashes) + 1)
            event: object = engine.stored(tokens, first, last)
            held[r].update(zip(hashes[first:last], owns[first:last]))
        elif roll < 0.95:
            # Tail-first eviction (keeps the replica prefix-closed), or any blocks (holes).
            tail = [h for h in hashes if h in held[r]][-rng.randrange(1, 6) :]
            gone = tail if roll < 0.8 else rng.sample(hashes, rng.randrange(1, 4))
            event = BlockRemoved(gone)
            for h in gone:
                held[r].pop(h, None)
        else:
            event = AllBlocksCleared()
            held[r].clear()
        index.apply(batch(r, seqno[r], event))
        seqno[r] += 1
        open_replicas = set()
        for tokens in seqs:
            owns = own(tokens)
            expected = {}
            for rid, blocks in held.items():
                values = set(blocks.values())
                depth = next((i for i, h in enumerate(owns) if h not in values), len(owns))
                if depth:
                    expected[ReplicaId(rid)] = depth
                if any(a not in values and b in values for a, b in pairwise(owns)):
                    open_replicas.add(rid)
            assert index.match(owns) == expected
        assert index.stats().open_replicas == len(open_replicas)
        assert open_replicas <= flagged_open(index), "an open replica would be bisected"
        open_counts.add(len(open_replicas))
        flagged_counts.add(len(flagged_open(index)))
    assert index.stats().blocks == sum(len(b) for b in held.values())
    assert min(open_counts) <= 2 and max(open_counts) >= 6  # both match paths were used
    assert min(flagged_counts) <= 2 and max(flagged_counts) >= 6


def test_a_replica_past_the_cap_loses_its_oldest_blocks_never_grows_past_it() -> None:
    index = PrefixIndex(max_blocks_per_replica=8)
    prompts = [list(range(1000 * k, 1000 * k + 4 * BS)) for k in range(1, 6)]  # 5 x 4 blocks
    for seq, p in enumerate(prompts):
        index.apply(batch("r1", seq, A.stored(p, 0, 4)))
        index.apply(batch("r2", seq, B.stored(p, 0, 1)))
    stats = index.stats()
    assert stats.blocks == 8 + 5, "r1 kept at its cap; r2 (under it) untouched"
    assert stats.evicted_blocks == 12
    assert index.match(own(prompts[-1])) == {R1: 4, R2: 1}, "the newest stay"
    assert index.match(own(prompts[0])) == {R2: 1}, "the oldest went"


def test_long_chains_over_many_replicas_match_a_plain_model() -> None:
    """Chains of 16+ blocks (the vectorised ingest path), over more than 64 replicas (masks
    of two words), with the tables rebuilt as they grow and shrink."""
    rng = random.Random(11)
    bs = 4
    seqs = [[rng.randrange(5000) for _ in range(bs * rng.randrange(16, 60))] for _ in range(40)]
    engines = {f"r{i}": FakeEngine(f"e{i % 5}".encode()) for i in range(70)}
    held: dict[str, dict[int, OwnBlockHash]] = {r: {} for r in engines}
    index, seqno = PrefixIndex(), dict.fromkeys(engines, 0)
    hashes = {(r, i): engines[r].hashes(seqs[i]) for r in engines for i in range(len(seqs))}

    def send(r: str, event: object) -> None:
        index.apply(batch(r, seqno[r], event))
        seqno[r] += 1

    for step in range(900):
        r = rng.choice(list(engines))
        i = rng.randrange(len(seqs))
        eh, owns = hashes[r, i], block_hashes(seqs[i], bs)
        roll = rng.random()
        if roll < 0.6:
            first = 0 if rng.random() < 0.5 else rng.randrange(len(eh) // 2)
            if first and eh[first - 1] not in held[r]:
                first = 0
            send(r, FakeEngine.stored(engines[r], seqs[i], first, len(eh)))
            held[r].update(zip(eh[first:], owns[first:]))
        elif roll < 0.9:
            gone = eh[rng.randrange(len(eh)) :] if roll < 0.8 else rng.sample(eh, 3)
            send(r, BlockRemoved(gone))
            for h in gone:
                held[r].pop(h, None)
        elif roll < 0.97:
            send(r, AllBlocksCleared())
            held[r].clear()
        else:
            index.remove_replica(ReplicaId(r))
            held[r].clear()
            seqno[r] = 0
        if step % 60 == 0 or step == 899:
            open_replicas = set()
            for tokens in seqs:
                owns = block_hashes(tokens, bs)
                expected = {}
                for rid, blocks in held.items():
                    values = set(blocks.values())
                    depth = next((k for k, h in enumerate(owns) if h not in values), len(owns))
                    if depth:
                        expected[ReplicaId(rid)] = depth
                    if any(a not in values and b in values for a, b in pairwise(owns)):
                        open_replicas.add(rid)
                assert index.match(owns) == expected
                assert index.match(index.hasher(tokens + [1, 2], bs)) == expected
            stats = index.stats()
            assert stats.open_replicas == len(open_replicas)
            assert open_replicas <= flagged_open(index)
            assert stats.blocks == sum(len(b) for b in held.values())
            assert stats.distinct_hashes == len({h for b in held.values() for h in b.values()})


def test_a_prompt_longer_than_what_is_held_matches_up_to_its_first_new_block() -> None:
    index = PrefixIndex()
    long = list(range(4000, 4000 + 300 * BS))
    index.apply(batch("r1", 0, A.stored(long, 0, 20), A.stored(long, 20, 170)))
    index.apply(batch("r2", 0, B.stored(long, 0, 17)))
    index.apply(batch("r3", 0, A.stored(long, 0, 90)))
    index.apply(batch("r3", 1, BlockRemoved([A.hashes(long)[40]])))  # a hole at 40
    r3 = ReplicaId("r3")
    for n in (1, 17, 64, 65, 120, 170, 171, 300):
        expected = {R1: min(n, 170), R2: min(n, 17), r3: min(n, 40)}
        assert index.match(index.hasher(long[: n * BS], BS)) == expected, n
    assert index.match(own(OTHER)) == {}


def test_engine_hashes_past_64_bits_are_folded() -> None:
    index = PrefixIndex()
    long = list(range(9000, 9000 + 40 * BS))
    wide = [2**64 + i for i in range(20)] + [-1 - i for i in range(20)]
    index.apply(batch("r1", 0, BlockStored(wide[:20], None, long[: 20 * BS], BS)))
    index.apply(batch("r1", 1, BlockStored(wide[20:], wide[19], long[20 * BS :], BS)))
    assert index.match(own(long)) == {R1: 40}
    index.apply(batch("r1", 2, BlockRemoved(wide[30:])))
    assert index.match(own(long)) == {R1: 30}


def test_only_replicas_with_holes_are_walked_and_a_closed_one_again_is_bisected() -> None:
    index = PrefixIndex()
    long = list(range(7000, 7000 + 40 * BS))
    eh = A.hashes(long)
    index.apply(batch("r1", 0, A.stored(long, 0, 20), A.stored(long, 20, 40)))
    index.apply(batch("r2", 0, A.stored(long, 0, 30)))
    assert flagged_open(index) == set()
    index.apply(batch("r1", 1, BlockRemoved(eh[35:][::-1])))  # tail-first: still closed
    assert flagged_open(index) == set()
    assert index.match(own(long)) == {R1: 35, R2: 30}
    index.apply(batch("r1", 2, BlockRemoved([eh[10]])))  # a hole: 11..34 lose their parent
    assert flagged_open(index) == {"r1"}
    assert index.match(own(long)) == {R1: 10, R2: 30}
    index.apply(batch("r1", 3, BlockRemoved(eh[11:35])))  # the orphans go: closed again
    assert flagged_open(index) == set()
    assert index.match(own(long)) == {R1: 10, R2: 30}
    index.apply(batch("r2", 1, BlockRemoved(eh[:5])))  # head-first eviction: open meanwhile
    assert flagged_open(index) == {"r2"}
    assert index.match(own(long)) == {R1: 10}
    index.apply(batch("r2", 2, BlockRemoved(eh[5:30])))
    assert flagged_open(index) == set()
    index.apply(batch("r2", 3, AllBlocksCleared()))
    assert index.match(own(long)) == {R1: 10}


def test_a_refilled_hole_stays_exact_and_a_clear_closes_the_replica() -> None:
    index = PrefixIndex()
    long = list(range(8000, 8000 + 24 * BS))
    eh = A.hashes(long)
    index.apply(batch("r1", 0, A.stored(long, 0, 24)))
    index.apply(batch("r1", 1, BlockRemoved([eh[8]])))
    assert index.match(own(long)) == {R1: 8}
    index.apply(batch("r1", 2, A.stored(long, 8, 9)))  # refilled: exact either way
    assert index.match(own(long)) == {R1: 24}
    for seq in range(3, 40):  # churn past compaction of the engine map
        index.apply(batch("r1", seq, BlockRemoved(eh[20:]), A.stored(long, 20, 24)))
    assert index.match(own(long)) == {R1: 24}
    index.apply(batch("r1", 40, AllBlocksCleared(), A.stored(long, 0, 12)))
    assert flagged_open(index) == set()
    assert index.match(own(long)) == {R1: 12}


def test_an_engine_hash_stored_again_for_other_tokens_is_walked() -> None:
    index = PrefixIndex()
    p, q = list(range(100, 100 + 6 * BS)), list(range(900, 900 + 6 * BS))
    eh = A.hashes(p)
    index.apply(batch("r1", 0, A.stored(p, 0, 6)))
    # The same engine hashes for other tokens (an engine that reuses block ids).
    index.apply(batch("r1", 1, BlockStored(eh[3:4], eh[2], q[3 * BS : 4 * BS], BS)))
    assert flagged_open(index) == {"r1"}
    assert index.match(own(p)) == {R1: 3}


def test_a_block_with_more_children_than_counted_makes_its_replica_walked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(index_tables, "_MAX_KIDS", 2)
    index = PrefixIndex()
    root = list(range(300, 300 + 2 * BS))
    turns = [root + list(range(1000 * k, 1000 * k + 2 * BS)) for k in range(1, 5)]
    index.apply(batch("r1", 0, A.stored(root, 0, 2)))
    for seq, t in enumerate(turns[:2], 1):
        index.apply(batch("r1", seq, A.stored(t, 2, 4)))
    assert flagged_open(index) == set()
    index.apply(batch("r1", 3, A.stored(turns[2], 2, 4)))  # a third child: past the count
    assert flagged_open(index) == {"r1"}
    index.apply(batch("r1", 4, BlockRemoved(A.hashes(root)[1:2])))
    assert index.match(own(turns[0])) == {R1: 1}
    index.apply(batch("r1", 5, AllBlocksCleared()))
    assert flagged_open(index) == set()
