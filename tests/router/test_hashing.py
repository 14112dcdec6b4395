"""The router's own block hash: deterministic, chained, sensitive to LoRA and seed."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from services.router.core.errors import InvalidBlockSize
from services.router.core.hashing import BlockHasher, block_hashes

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
        assert hasher(TOKENS, 16, lora) == block_hashes(TOKENS, 16, lora, seed=3)


def test_token_ids_beyond_uint32_and_bad_block_size_are_rejected() -> None:
    with pytest.raises(OverflowError):
        block_hashes([2**32] * 16, 16)
    with pytest.raises(InvalidBlockSize) as err:
        block_hashes(TOKENS, 0)
    assert err.value.block_size == 0
