"""Paged KV block pool with prefix caching and vLLM's KV events, for the simulator (pure, no I/O).

Modelled on vLLM v1's `BlockPool` / `KVCacheManager` (and nano-vllm's `BlockManager`):

- `num_blocks` blocks of `block_size` tokens each, ids 0..num_blocks-1, all free at start.
- A *full* block is identified by a chained 64-bit hash over its token ids and LoRA name:
  `hash_block_tokens(hash_function, parent_block_hash, block_token_ids, lora_name)`, where the
  first block of a sequence chains to `root_block_hash(hash_function, hash_seed)` (vLLM's
  NONE_HASH). The default `blake2b_64` is deterministic across processes (unlike `hash()`).
- Blocks are ref-counted. A block whose count drops to 0 goes to the tail of an LRU free queue
  but keeps its hash: it is still a prefix-cache hit until it is taken from the head of the
  queue for new data, which evicts it (its hash is dropped).
- Events, as vLLM records them: `BlockStored` when full blocks get hashed (one event per run
  of consecutive blocks of one sequence), `BlockRemoved` when cached blocks are evicted (one
  event per allocation call, naming every hash it evicted, oldest first), `AllBlocksCleared` on
  `reset()`. Collect them with `drain_events()`.

One deliberate difference from vLLM: when a block fills with a hash that another block
already holds (two sequences computed the same tokens side by side), vLLM registers a
duplicate and publishes the hash twice; here the second block stays private (unhashed, no
event), so every hash is stored once and removed once.

Public API (used by the scheduler; a router benchmark may use the hashing functions):
    blake2b_64(data) -> int
    root_block_hash(hash_function, hash_seed) -> int
    hash_block_tokens(hash_function, parent_block_hash, block_token_ids, lora_name) -> int
    extend_block_hashes(hash_function, root, block_size, token_ids, block_hashes, lora_name)
    BlockPool(num_blocks, block_size, *, hash_function, hash_seed, record_events)
        .get_cached_prefix(block_hashes, max_blocks) -> list[block id]
        .can_allocate(num_new_blocks, hit_block_ids) / .allocate(num_new_blocks, hit_block_ids)
        .cache_blocks(block_ids, block_hashes, start, end, token_ids, lora_name)
        .free(block_ids) / .reset() -> bool / .drain_events() / .cached_blocks()
        .num_free_blocks / .num_active_blocks / .num_cached_blocks / .num_cached_free_blocks
"""

from __future__ import annotations

import sys
from array import array
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from hashlib import blake2b

from basalt.ids import EngineBlockHash
from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from services.runtime.engines.sim.core.errors import OutOfBlocks

HashFunction = Callable[[bytes], int]
"""Bytes to an unsigned 64-bit int; must be deterministic across processes."""

_U64 = (1 << 64) - 1
_BIG_ENDIAN = sys.byteorder == "big"


def blake2b_64(data: bytes) -> int:
    """The default block hash: BLAKE2b with an 8-byte digest, read little-endian."""
    return int.from_bytes(blake2b(data, digest_size=8).digest(), "little")


def token_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32 bytes."""
    arr = array("I", token_ids)
    if _BIG_ENDIAN:  # pragma: no cover - only on big-endian hosts
        arr.byteswap()
    return arr.tobytes()


def root_block_hash(hash_function: HashFunction, hash_seed: int) -> EngineBlockHash:
    """The parent every sequence's first block chains to (vLLM's NONE_HASH), from a seed."""
    seed = (hash_seed & _U64).to_bytes(8, "little")
    return EngineBlockHash(hash_function(b"basalt-sim-root:" + seed) & _U64)


def hash_block_tokens(
    hash_function: HashFunction,
    parent_block_hash: int,
    block_token_ids: Sequence[int],
    lora_name: str | None,
) -> EngineBlockHash:
    """Hash of one full block: parent hash, uint32 token ids, then the LoRA name if any."""
    data = parent_block_hash.to_bytes(8, "little") + token_bytes(block_token_ids)
    if lora_name:
        data += b"\x00lora:" + lora_name.encode("utf-8")
    return EngineBlockHash(hash_function(data) & _U64)


def extend_block_hashes(
    hash_function: HashFunction,
    root: int,
    block_size: int,
    token_ids: Sequence[int],
    block_hashes: list[int],
    lora_name: str | None,
) -> None:
    """Append to `block_hashes` the hashes of the full blocks of `token_ids` not hashed yet."""
    parent = block_hashes[-1] if block_hashes else root
    for i in range(len(block_hashes), len(token_ids) // block_size):
        start = i * block_size
        parent = hash_block_tokens(
            hash_function, parent, token_ids[start : start + block_size], lora_name
        )
        block_hashes.append(parent)


@dataclass(slots=True, frozen=True)
class _CachedBlock:
    """What a dump needs to re-announce a cached block."""

    parent_block_hash: int | None
    depth: int  # index of the block in its sequence: parents have smaller depth
    token_ids: tuple[int, ...]
    lora_name: str | None


class BlockPool:
    """Ref-counted KV blocks, a hash -> block prefix cache and an LRU queue of free blocks."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        *,
        hash_function: HashFunction = blake2b_64,
        hash_seed: int = 0,
        record_events: bool = True,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.hash_function = hash_function
        self.root_hash = root_block_hash(hash_function, hash_seed)
        self.record_events = record_events
        self._ref = [0] * num_blocks
        self._hash: list[int | None] = [None] * num_blocks
        self._info: list[_CachedBlock | None] = [None] * num_blocks
        self._by_hash: dict[int, int] = {}
        # Free blocks, least recently freed first; dict order is the LRU order.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._num_cached_free = 0
        self._events: list[KvEvent] = []

    # -- counters --------------------------------------------------------------------------

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref count 0, cached or not: what an allocation can take."""
        return len(self._free)

    @property
    def num_active_blocks(self) -> int:
        """Blocks held by at least one sequence."""
        return self.num_blocks - len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks that hold a hash (prefix-cache hits), active or free."""
        return len(self._by_hash)

    @property
    def num_cached_free_blocks(self) -> int:
        """Free blocks that still hold a hash: evicted first-in first-out when space is needed."""
        return self._num_cached_free

    # -- hashing and lookup ----------------------------------------------------------------

    def extend_block_hashes(
        self, token_ids: Sequence[int], block_hashes: list[int], lora_name: str | None
    ) -> None:
        """`extend_block_hashes` with this pool's hash function, root and block size."""
        extend_block_hashes(
            self.hash_function, self.root_hash, self.block_size, token_ids, block_hashes, lora_name
        )

    def get_cached_prefix(self, block_hashes: Sequence[int], max_blocks: int) -> list[int]:
        """Ids of the cached blocks matching the leading `block_hashes`, up to `max_blocks`."""
        hits: list[int] = []
        by_hash = self._by_hash
        for i in range(min(max_blocks, len(block_hashes))):
            block_id = by_hash.get(block_hashes[i])
            if block_id is None:
                break
            hits.append(block_id)
        return hits

    # -- allocation ------------------------------------------------------------------------

    def can_allocate(self, num_new_blocks: int, hit_block_ids: Sequence[int] = ()) -> bool:
        """Whether `allocate` would succeed: hits that are free now also leave the free queue."""
        ref = self._ref
        taken_from_free = sum(1 for b in hit_block_ids if ref[b] == 0)
        return num_new_blocks + taken_from_free <= len(self._free)

    def allocate(self, num_new_blocks: int, hit_block_ids: Sequence[int] = ()) -> list[int]:
        """Take a reference on each hit block, then return `num_new_blocks` fresh blocks.

        Fresh blocks come from the head of the free queue; a cached one is evicted (its hash
        dropped, one `BlockRemoved` recorded for the call). Raises OutOfBlocks when
        `can_allocate` is false.
        """
        if not self.can_allocate(num_new_blocks, hit_block_ids):
            raise OutOfBlocks(num_new_blocks, len(self._free))
        ref, free = self._ref, self._free
        for b in hit_block_ids:
            if ref[b] == 0:
                del free[b]
                self._num_cached_free -= 1
            ref[b] += 1
        new: list[int] = []
        removed: list[int] = []
        hashes = self._hash
        for _ in range(num_new_blocks):
            b = free.popitem(last=False)[0]
            h = hashes[b]
            if h is not None:
                del self._by_hash[h]
                hashes[b] = None
                self._info[b] = None
                self._num_cached_free -= 1
                removed.append(h)
            ref[b] = 1
            new.append(b)
        if removed and self.record_events:
            self._events.append(BlockRemoved(block_hashes=removed))
        return new

    def cache_blocks(
        self,
        block_ids: Sequence[int],
        block_hashes: Sequence[int],
        start: int,
        end: int,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        """Register blocks `start..end-1` of a sequence (now full) under their hashes.

        Records one BlockStored per run of consecutive newly cached blocks. A block whose
        hash is already cached elsewhere stays private (see the module docstring).
        """
        by_hash, hashes, info, bs = self._by_hash, self._hash, self._info, self.block_size
        run_start = -1
        for i in range(start, end):
            h, b = block_hashes[i], block_ids[i]
            if h in by_hash or hashes[b] is not None:
                if run_start >= 0:
                    self._record_stored(block_hashes, run_start, i, token_ids, lora_name)
                    run_start = -1
                continue
            by_hash[h] = b
            hashes[b] = h
            parent = block_hashes[i - 1] if i > 0 else None
            info[b] = _CachedBlock(parent, i, tuple(token_ids[i * bs : (i + 1) * bs]), lora_name)
            if self._ref[b] == 0:  # not expected (sequences cache blocks they hold), kept exact
                self._num_cached_free += 1
            if run_start < 0:
                run_start = i
        if run_start >= 0:
            self._record_stored(block_hashes, run_start, end, token_ids, lora_name)

    def _record_stored(
        self,
        block_hashes: Sequence[int],
        start: int,
        end: int,
        token_ids: Sequence[int],
        lora_name: str | None,
    ) -> None:
        if not self.record_events:
            return
        bs = self.block_size
        self._events.append(
            BlockStored(
                block_hashes=list(block_hashes[start:end]),
                parent_block_hash=block_hashes[start - 1] if start > 0 else None,
                token_ids=list(token_ids[start * bs : end * bs]),
                block_size=bs,
                lora_name=lora_name,
            )
        )

    def free(self, block_ids: Sequence[int]) -> None:
        """Drop one reference on each block; tail blocks first, so they are evicted first."""
        ref, free, hashes = self._ref, self._free, self._hash
        for b in reversed(block_ids):
            ref[b] -= 1
            if ref[b] == 0:
                free[b] = None
                if hashes[b] is not None:
                    self._num_cached_free += 1

    def reset(self) -> bool:
        """Drop every cached hash (vLLM's reset_prefix_cache); False while blocks are in use."""
        if self.num_active_blocks:
            return False
        self._by_hash.clear()
        self._hash = [None] * self.num_blocks
        self._info = [None] * self.num_blocks
        self._num_cached_free = 0
        if self.record_events:
            self._events.append(AllBlocksCleared())
        return True

    # -- events and dumps ------------------------------------------------------------------

    def drain_events(self) -> list[KvEvent]:
        """The events recorded since the last drain, in order."""
        events, self._events = self._events, []
        return events

    def cached_blocks(self) -> list[BlockStored]:
        """Every cached block, one BlockStored each, parents before children."""
        rows = sorted((info.depth, b) for b, info in enumerate(self._info) if info is not None)
        out: list[BlockStored] = []
        for _, b in rows:
            info = self._info[b]
            h = self._hash[b]
            assert info is not None and h is not None
            out.append(
                BlockStored(
                    block_hashes=[h],
                    parent_block_hash=info.parent_block_hash,
                    token_ids=list(info.token_ids),
                    block_size=self.block_size,
                    lora_name=info.lora_name,
                )
            )
        return out
