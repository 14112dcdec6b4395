"""The simulator's paged block pool: hashing, prefix hits, LRU eviction and KV events."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored
from services.runtime.engines.sim.core.block_pool import (
    BlockPool,
    blake2b_64,
    hash_block_tokens,
    root_block_hash,
)
from services.runtime.engines.sim.core.errors import OutOfBlocks

BS = 4


def _seq(
    pool: BlockPool, tokens: list[int], lora: str | None = None
) -> tuple[list[int], list[int]]:
    """Allocate and cache a sequence the way the scheduler does; return (block ids, hashes)."""
    hashes: list[int] = []
    pool.extend_block_hashes(tokens, hashes, lora)
    hits = pool.get_cached_prefix(hashes, (len(tokens) - 1) // BS)
    need = -(-len(tokens) // BS) - len(hits)
    blocks = hits + pool.allocate(need, hits)
    pool.cache_blocks(blocks, hashes, len(hits), len(tokens) // BS, tokens, lora)
    return blocks, hashes


def test_hashes_are_64_bit_chained_and_keyed_by_lora_and_seed() -> None:
    root = root_block_hash(blake2b_64, 0)
    h1 = hash_block_tokens(blake2b_64, root, [1, 2, 3, 4], None)
    assert 0 <= h1 < 2**64
    assert h1 == hash_block_tokens(blake2b_64, root, [1, 2, 3, 4], None)
    assert h1 != hash_block_tokens(blake2b_64, root, [1, 2, 3, 4], "ad1")
    assert h1 != hash_block_tokens(blake2b_64, root_block_hash(blake2b_64, 1), [1, 2, 3, 4], None)
    # The same tokens after a different parent are a different block.
    h2 = hash_block_tokens(blake2b_64, h1, [1, 2, 3, 4], None)
    assert h2 != h1


def test_hashes_do_not_depend_on_the_process() -> None:
    code = (
        "from services.runtime.engines.sim.core.block_pool import *;"
        "print(hash_block_tokens(blake2b_64, root_block_hash(blake2b_64, 7), [5, 6, 7], 'x'))"
    )
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    here = hash_block_tokens(blake2b_64, root_block_hash(blake2b_64, 7), [5, 6, 7], "x")
    assert int(out.stdout) == here


def test_hash_function_is_pluggable() -> None:
    pool = BlockPool(8, BS, hash_function=lambda data: len(data))
    blocks, hashes = _seq(pool, list(range(9)))
    assert hashes == [24, 24]  # 8-byte parent + 4 uint32 tokens, whatever the content
    assert len(blocks) == 3


def test_second_sequence_with_same_prefix_hits_the_cache() -> None:
    pool = BlockPool(16, BS)
    a_blocks, a_hashes = _seq(pool, list(range(10)))  # 2 full blocks + 2 tokens
    b_tokens = list(range(8)) + [99, 98, 97]
    b_hashes: list[int] = []
    pool.extend_block_hashes(b_tokens, b_hashes, None)
    hits = pool.get_cached_prefix(b_hashes, (len(b_tokens) - 1) // BS)
    assert hits == a_blocks[:2]
    assert b_hashes[:2] == a_hashes[:2]


def test_lora_sequences_do_not_hit_base_model_blocks() -> None:
    pool = BlockPool(16, BS)
    tokens = list(range(12))
    _seq(pool, tokens)
    hashes: list[int] = []
    pool.extend_block_hashes(tokens, hashes, "ad1")
    assert pool.get_cached_prefix(hashes, 2) == []


def test_stored_events_chain_parents_across_events() -> None:
    pool = BlockPool(16, BS)
    tokens = list(range(8))
    blocks, hashes = _seq(pool, tokens)
    (first,) = pool.drain_events()
    assert isinstance(first, BlockStored)
    assert first.block_hashes == hashes and first.parent_block_hash is None
    assert first.token_ids == tokens and first.block_size == BS
    # The sequence grows by a block (decode): a new event chained to the last one.
    tokens += [50, 51, 52, 53]
    blocks += pool.allocate(1)
    pool.extend_block_hashes(tokens, hashes, None)
    pool.cache_blocks(blocks, hashes, 2, 3, tokens, None)
    (second,) = pool.drain_events()
    assert isinstance(second, BlockStored)
    assert second.parent_block_hash == first.block_hashes[-1]
    assert second.token_ids == [50, 51, 52, 53]


def test_freed_blocks_stay_cached_until_evicted_oldest_first() -> None:
    pool = BlockPool(4, BS)
    a_blocks, a_hashes = _seq(pool, list(range(8)))  # 2 blocks, both full
    pool.free(a_blocks)
    assert (pool.num_active_blocks, pool.num_cached_free_blocks) == (0, 2)
    b_blocks, b_hashes = _seq(pool, list(range(100, 108)))
    pool.free(b_blocks)
    pool.drain_events()
    assert pool.num_cached_free_blocks == 4
    # Two new blocks evict A's: freed first, and tail blocks before head blocks.
    pool.allocate(2)
    (removed,) = pool.drain_events()
    assert removed == BlockRemoved(block_hashes=[a_hashes[1], a_hashes[0]])
    assert pool.get_cached_prefix(a_hashes, 2) == []
    assert pool.get_cached_prefix(b_hashes, 2) == b_blocks
    assert (pool.num_active_blocks, pool.num_cached_free_blocks) == (2, 2)


def test_a_hit_refreshes_a_free_block_so_it_is_not_evicted() -> None:
    pool = BlockPool(4, BS)
    a_blocks, a_hashes = _seq(pool, list(range(8)))
    pool.free(a_blocks)
    b_blocks, _ = _seq(pool, list(range(100, 108)))
    pool.free(b_blocks)
    # A is reused (leaves the free queue), so the next allocation evicts B instead.
    hits = pool.get_cached_prefix(a_hashes, 2)
    pool.allocate(0, hits)
    pool.drain_events()
    pool.allocate(2)
    (removed,) = pool.drain_events()
    assert isinstance(removed, BlockRemoved)
    assert set(removed.block_hashes).isdisjoint(a_hashes)
    assert pool.get_cached_prefix(a_hashes, 2) == a_blocks


def test_allocation_beyond_free_blocks_is_refused() -> None:
    pool = BlockPool(2, BS)
    pool.allocate(2)
    assert not pool.can_allocate(1)
    with pytest.raises(OutOfBlocks) as err:
        pool.allocate(1)
    assert (err.value.requested, err.value.free) == (1, 0)


def test_shared_block_is_freed_only_when_the_last_holder_lets_go() -> None:
    pool = BlockPool(8, BS)
    a_blocks, _ = _seq(pool, list(range(9)))
    b_blocks, _ = _seq(pool, list(range(8)) + [7, 7])
    assert b_blocks[:2] == a_blocks[:2]
    assert pool.num_active_blocks == 4
    pool.free(a_blocks)
    assert pool.num_active_blocks == 3  # the shared two + B's own tail
    pool.free(b_blocks)
    assert pool.num_active_blocks == 0


def test_duplicate_content_is_stored_once() -> None:
    pool = BlockPool(8, BS)
    tokens = list(range(8))
    first, _ = _seq(pool, tokens)
    # A second sequence fills its own blocks with the same tokens (no lookup first).
    hashes: list[int] = []
    pool.extend_block_hashes(tokens, hashes, None)
    twin = pool.allocate(2)
    pool.drain_events()
    pool.cache_blocks(twin, hashes, 0, 2, tokens, None)
    assert pool.drain_events() == []
    assert pool.get_cached_prefix(hashes, 2) == first


def test_reset_clears_the_cache_only_when_idle() -> None:
    pool = BlockPool(8, BS)
    blocks, hashes = _seq(pool, list(range(8)))
    assert pool.reset() is False
    pool.free(blocks)
    pool.drain_events()
    assert pool.reset() is True
    assert pool.drain_events() == [AllBlocksCleared()]
    assert pool.get_cached_prefix(hashes, 2) == []
    assert pool.cached_blocks() == []


def test_cached_blocks_dump_lists_parents_first() -> None:
    pool = BlockPool(16, BS)
    _, hashes = _seq(pool, list(range(12)))
    _, other = _seq(pool, list(range(8)) + [40, 41, 42, 43, 44])
    dump = pool.cached_blocks()
    assert sorted(h for e in dump for h in e.block_hashes) == sorted(set(hashes + other))
    seen: set[int] = set()
    for e in dump:
        assert e.parent_block_hash is None or e.parent_block_hash in seen
        seen.update(e.block_hashes)
