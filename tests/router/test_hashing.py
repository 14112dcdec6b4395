"""The router's own block hash: deterministic, chained, sensitive to LoRA and seed."""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
from array import array
from pathlib import Path

import numpy as np
import pytest

from services.router.core.errors import InvalidBlockSize
from services.router.core.hashing import BlockHasher, block_hashes, pack_tokens

TOKENS = list(range(1000, 1064))  # 4 blocks of 16
REPO = Path(__file__).resolve().parents[2]


def test_only_full_blocks_are_hashed() -> None:
    assert len(block_hashes(TOKENS, 16)) == 4
    assert len(block_hashes(TOKENS + [1, 2, 3], 16)) == 4
    assert block_hashes(TOKENS[:15], 16) == []
    assert block_hashes(TOKENS + [1, 2, 3], 16) == block_hashes(TOKENS, 16)


def test_hashes_are_64_bit_ints_and_differ_per_block() -> None:
    hashes = block_hashes(TOKENS, 16)
    assert all(isinstance(h, int) and 0 <= h < 2**64 for h in hashes)
    assert len(set(hashes)) == 4


def test_same_tokens_give_same_hashes_in_another_process() -> None:
    code = (
        "from services.router.core.hashing import block_hashes;"
        f"print(block_hashes({TOKENS!r}, 16, 'ad', seed=7))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=REPO,
        env={"PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)},
    )
    assert out.stdout.strip() == str(block_hashes(TOKENS, 16, "ad", seed=7))


def test_a_block_hash_depends_on_every_block_before_it() -> None:
    base = block_hashes(TOKENS, 16)
    changed = list(TOKENS)
    changed[0] += 1  # first block differs; later blocks are identical token for token
    other = block_hashes(changed, 16)
    assert all(a != b for a, b in zip(base, other))


def test_chaining_from_a_parent_continues_the_sequence() -> None:
    full = block_hashes(TOKENS, 16)
    tail = block_hashes(TOKENS[32:], 16, parent=full[1])
    assert tail == full[2:]


def test_lora_changes_every_hash_and_empty_name_is_the_base_model() -> None:
    base = block_hashes(TOKENS, 16)
    with_lora = block_hashes(TOKENS, 16, lora_name="sql-adapter")
    other_lora = block_hashes(TOKENS, 16, lora_name="chat-adapter")
    assert not set(base) & set(with_lora)
    assert not set(with_lora) & set(other_lora)
    assert block_hashes(TOKENS, 16, lora_name="") == base


def test_seed_and_hash_function_change_the_hashes() -> None:
    base = block_hashes(TOKENS, 16)
    assert not set(base) & set(block_hashes(TOKENS, 16, seed=1))
    sha = block_hashes(TOKENS, 16, hash_fn=hashlib.sha256)
    assert not set(base) & set(sha)
    assert all(0 <= h < 2**64 for h in sha)


def test_block_size_is_part_of_the_hash() -> None:
    assert not set(block_hashes(TOKENS, 16)) & set(block_hashes(TOKENS, 32))


def test_bound_hasher_matches_the_function() -> None:
    hasher = BlockHasher(seed=3)
    for lora in (None, "a", "b", None):
        out = hasher(TOKENS, 16, lora)
        assert out.dtype == np.uint64
        assert out.tolist() == block_hashes(TOKENS, 16, lora, seed=3)


def test_the_hash_is_pinned() -> None:
    """The same on every machine and release: routers of mixed versions share an index
    only while this holds (change it only with a new hash version label)."""
    assert block_hashes(TOKENS, 16, "ad", seed=7) == [
        13535968033645097826, 595781821066470450, 16768578709724278292, 13724492147442001175
    ]


def test_packed_tokens_hash_like_the_list() -> None:
    hasher = BlockHasher()
    expected = block_hashes(TOKENS, 16, "ad")
    packed = pack_tokens(TOKENS)
    for form in (packed, bytearray(packed), memoryview(packed), array("I", TOKENS),
                 np.array(TOKENS, dtype=np.uint32), np.array(TOKENS, dtype=np.int64)):
        assert hasher(form, 16, "ad").tolist() == expected  # type: ignore[arg-type]
    with pytest.raises(OverflowError):
        hasher(np.array([-1] * 16), 16)
    with pytest.raises(TypeError):
        hasher(array("H", TOKENS), 16)


def test_a_chain_continues_from_any_parent_at_any_block_size() -> None:
    rng = random.Random(1)
    tokens = [rng.randrange(2**32) for _ in range(3 * 5 * 40)]
    hasher = BlockHasher(seed=9)
    for bs in (1, 2, 3, 5, 16):
        full = hasher(tokens, bs, "x")
        cut = len(full) // 3
        tail = hasher(tokens[cut * bs :], bs, "x", parent=int(full[cut - 1]))
        assert tail.tolist() == full[cut:].tolist()
        assert len(set(full.tolist())) == len(full)


def test_repeated_and_permuted_blocks_hash_apart() -> None:
    a, b = [7] * 16, [8] * 16
    first = block_hashes(a + b + a, 16)
    second = block_hashes(b + a + a, 16)
    assert len(set(first)) == 3 and first[2] != second[2]
    assert len(set(block_hashes(a * 64, 16))) == 64  # the same block at each position


def test_long_prompts_grow_the_tables() -> None:
    hasher = BlockHasher()
    tokens = list(range(16 * 3000))
    assert hasher(tokens, 16).tolist() == block_hashes(tokens, 16)
    assert hasher(tokens[:64], 16).tolist() == block_hashes(tokens[:64], 16)


def test_token_ids_beyond_uint32_and_bad_block_size_are_rejected() -> None:
    with pytest.raises(OverflowError):
        block_hashes([2**32] * 16, 16)
    with pytest.raises(InvalidBlockSize) as err:
        block_hashes(TOKENS, 0)
    assert err.value.block_size == 0
