"""KV prefix index: which replicas hold how many leading blocks of a request (pure, no I/O).

Built from the replicas' KV event batches, keyed by the router's own chained hash (`hashing`),
so replicas whose engines hash differently meet on the same keys. Per replica,
`engine hash -> own hash` (`EngineMap`) resolves parents and removals (`dups` counts the rare
own hash held under several engine hashes).

Representation (index_tables.py): one `OwnTable`, own hash -> bitmask of replica slots
(replica ids interned to small ints; slots reused) and the slot of its parent block, in flat
arrays: about 60 bytes per indexed (replica, block) where CPython dicts took 230.

Match: a replica whose cached set is prefix-closed (every held block's parent held too; vLLM
and SGLang evict tail-first, so this is the normal state) holds block i of a chain only if it
holds blocks 0..i-1, so its depth is found by bisection: ~log2(n) table lookups per distinct
depth (~20 for a 1,024-block prompt), the last block first. Which replicas are closed is kept
per event by each replica's `EngineMap` (index_tables.py): per entry its parent entry and
how many live entries name it as parent, so removing a block with held children counts them
as orphans, and removing an orphan uncounts it. The count errs only high (a parent stored
again does not adopt the orphans of its old entry; an engine hash remapped to other tokens
or a block with more than 65,535 held children mark the replica dirty until it is cleared),
so a replica is bisected only when it surely has no holes. When any replica holding the
first block may have holes (`_open`), the prompt's hashes are looked up in one vectorised
pass (numpy over the table's buckets) and a cumulative AND of their masks gives every
replica's depth at once, exact whatever the holes; a prompt that runs past what any replica
holds (a new turn) is cut first, by a short bisection, at a block no replica holds. A miss on
the first block answers at once.

`stats` counts the open replicas exactly, from the table's parent slots (O(distinct blocks)).

Sequencing per replica (epoch, seq), with `floor` = the seq of the last dump applied:
  new replica or new epoch  -> drop its entries; apply; need_dump unless seq == 0
  seq == last + 1           -> apply
  seq > last + 1 (a gap)    -> apply what can be chained; need_dump
  seq <= floor, seq == last -> stale (delivered around a dump, or twice): ignored
  floor < seq < last        -> seq went backwards: drop its entries; apply; need_dump
need_dump then stays set on every result for that replica until `apply_dump` (or a fresh
start at seq 0 in a new epoch), so an adapter whose dump call failed tries again.

Bounded: a replica holds at most `max_blocks_per_replica` entries; past it, its oldest
entries are evicted (counted in `evicted_blocks`), so no stream of events, true or forged,
grows the index without limit.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence

import numpy as np

from basalt.ids import ReplicaId
from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatchData
from services.router.core.hashing import BlockHasher, HasherFactory, OwnHashes, default_hasher
from services.router.core.index_records import ApplyTally, IndexCounters, IndexedReplica
from services.router.core.index_tables import BUCKET, EMPTY, NO_PARENT, ROOT, OwnTable, own_key
from services.router.core.types import ApplyResult, IndexStats, OwnBlockHash

__all__ = ["DEFAULT_MAX_BLOCKS_PER_REPLICA", "ApplyResult", "IndexStats", "PrefixIndex"]

# 2^18 blocks is 4M tokens at block size 16: more than any one replica's KV cache today.
DEFAULT_MAX_BLOCKS_PER_REPLICA = 1 << 18
_TWO = np.uint64(2)
# From this many blocks, a BlockStored event is indexed in one vectorised pass.
_BULK_BLOCKS = 16
# `match` looks for a block no replica holds by bisection down to spans of this many blocks.
_GAP_SPAN = 32


class PrefixIndex:
    """Prefix index over every replica this router knows, of every deployment (the router
    builds one; a deployment's candidates are filtered before matching, and block hashes
    differ by LoRA and block size). Not thread-safe; no I/O."""

    __slots__ = ("_entries", "_free_slots", "_hasher", "_max_blocks", "_n", "_open", "_own",
                 "_replicas", "_slot_ids")

    def __init__(self, seed: int = 0, hash_fn: HasherFactory = default_hasher,
                 max_blocks_per_replica: int = DEFAULT_MAX_BLOCKS_PER_REPLICA) -> None:
        if max_blocks_per_replica < 1:
            raise ValueError("max_blocks_per_replica must be at least 1")
        self._max_blocks = max_blocks_per_replica
        self._hasher = BlockHasher(seed, hash_fn)
        self._own = OwnTable()
        self._replicas: dict[ReplicaId, IndexedReplica] = {}
        self._slot_ids: list[ReplicaId | None] = []
        self._free_slots: list[int] = []
        self._entries = 0
        self._n = IndexCounters()
        # Slot bits of replicas that may hold a block without its parent (see `match`).
        self._open = 0

    @property
    def hasher(self) -> BlockHasher:
        """The hasher requests must be hashed with to match this index."""
        return self._hasher

    # -- ingest ----------------------------------------------------------------------------

    def apply(self, batch: KvEventBatchData) -> ApplyResult:
        """Ingest one batch from one replica (see the module docstring for sequencing)."""
        rid = ReplicaId(batch.replica_id)
        rep = self._replicas.get(rid)
        seq = batch.seq
        reset = False
        need_dump = False
        if rep is None:
            rep = self._add_replica(rid, batch.epoch, seq)
            need_dump = seq != 0
        elif batch.epoch != rep.epoch:
            self._reset(rep, batch.epoch)
            reset, need_dump = True, seq != 0
        elif seq <= rep.floor_seq or seq == rep.last_seq:
            self._n.stale_batches += 1
            return ApplyResult(need_dump=rep.dump_pending, stale=True)
        elif seq < rep.last_seq:
            self._reset(rep, batch.epoch)
            reset, need_dump = True, seq != 0
        elif seq != rep.last_seq + 1:
            need_dump = True
        rep.last_seq = seq
        if reset:
            self._n.resets += 1
            rep.dump_pending = False
        if need_dump and not rep.dump_pending:
            self._n.dumps_requested += 1
            rep.dump_pending = True
        tally = ApplyTally()
        for event in batch.events:
            if isinstance(event, BlockStored):
                self._store(rep, event, tally)
            elif isinstance(event, BlockRemoved):
                self._remove(rep, event.block_hashes, tally)
            elif isinstance(event, AllBlocksCleared):
                self._clear(rep)
        self._mark(rep)
        return ApplyResult(
            rep.dump_pending, reset, False, tally.stored, tally.removed, tally.skipped
        )

    def apply_dump(
        self, replica_id: ReplicaId, epoch: str, seq: int, blocks: Iterable[BlockStored]
    ) -> ApplyResult:
        """Replace the replica's entries with a dump (BlockStored, parents first) at `seq`."""
        rep = self._replicas.get(replica_id)
        if rep is None:
            rep = self._add_replica(replica_id, epoch, seq)
        else:
            self._reset(rep, epoch)
        rep.last_seq = seq
        rep.floor_seq = seq
        rep.dump_pending = False
        tally = ApplyTally()
        for event in blocks:
            self._store(rep, event, tally)
        self._mark(rep)
        return ApplyResult(False, True, False, tally.stored, 0, tally.skipped)

    def remove_replica(self, replica_id: ReplicaId) -> bool:
        """Forget a replica (its record expired); False when it was not known."""
        rep = self._replicas.pop(replica_id, None)
        if rep is None:
            return False
        self._clear(rep)
        self._open &= ~(1 << rep.slot)
        self._slot_ids[rep.slot] = None
        self._free_slots.append(rep.slot)
        return True

    # -- query -----------------------------------------------------------------------------

    def match(self, own_hashes: Sequence[OwnBlockHash] | OwnHashes) -> dict[ReplicaId, int]:
        """Per replica, how many leading blocks of `own_hashes` it holds (only replicas > 0).

        `own_hashes` is one chain, as `hasher` returns it for a prompt."""
        n = len(own_hashes)
        if n == 0:
            return {}
        first = self._own.find(own_key(int(own_hashes[0])))
        held = self._mask_at(first) if first >= 0 else 0
        if not held:
            return {}
        if n == 1:
            return self._emit(held, 1, {})
        if not held & self._open:
            return self._bisect(own_hashes, held)
        hashes = np.maximum(np.asarray(own_hashes, dtype=np.uint64), _TWO)
        if n > 2 * _GAP_SPAN:
            hashes = hashes[: self._gap(hashes)]
        return self._depths(self._masks_of(hashes))

    def _mask_at(self, slot: int) -> int:
        """The replica bits of table slot `slot`, as one int."""
        table = self._own
        w = table.words
        if w == 1:
            return table.masks[slot]
        return int.from_bytes(table.masks[slot * w : slot * w + w].tobytes(), sys.byteorder)

    def _bisect(
        self, hashes: Sequence[OwnBlockHash] | OwnHashes, bits: int
    ) -> dict[ReplicaId, int]:
        """Depths of the prefix-closed replicas `bits` (all holding block 0): holders of
        block i nest as i grows, so split [lo, hi) only while the holder sets at its ends
        differ (~log2 n lookups per distinct depth; the last block first, as a whole cached
        prompt is the common hit). The table lookup is `OwnTable.find`, inlined."""
        table = self._own
        out: dict[ReplicaId, int] = {}
        keys, masks, nb, w = table.keys, table.masks, table.buckets, table.words

        def holders(i: int) -> int:
            key = own_key(int(hashes[i]))
            b = ((key >> 32) * nb) >> 32
            while True:
                base = b * BUCKET
                row = keys[base : base + BUCKET]
                if key in row:
                    slot = base + row.index(key)
                    return masks[slot] if w == 1 else self._mask_at(slot)
                if EMPTY in row:
                    return 0
                b = b + 1 if b + 1 < nb else 0

        last = len(hashes) - 1
        at_last = holders(last) & bits
        if at_last:
            self._emit(at_last, last + 1, out)
        stack = [(0, last, bits, at_last)]  # (lo, hi, holders of block lo, of block hi)
        while stack:
            lo, hi, at_lo, at_hi = stack.pop()
            if at_lo == at_hi:
                continue
            if hi - lo == 1:
                self._emit(at_lo ^ at_hi, hi, out)
                continue
            mid = (lo + hi) >> 1
            at_mid = holders(mid) & at_lo
            stack.append((mid, hi, at_mid, at_hi & at_mid))
            stack.append((lo, mid, at_lo, at_mid))
        return out

    def _emit(self, bits: int, depth: int, out: dict[ReplicaId, int]) -> dict[ReplicaId, int]:
        ids = self._slot_ids
        while bits:
            low = bits & -bits
            rid = ids[low.bit_length() - 1]
            if rid is not None:
                out[rid] = depth
            bits ^= low
        return out

    def _gap(self, hashes: OwnHashes) -> int:
        """An index no replica holds the block at (len(hashes) if it holds the last): a
        prompt that goes past what is cached (a new turn) is matched up to there only.
        Bisection, down to `_GAP_SPAN` blocks; exact whatever the holes, since any block
        no replica holds bounds every depth."""
        table = self._own

        def held(i: int) -> bool:
            slot = table.find(int(hashes[i]))
            return slot >= 0 and not table.is_empty(slot)

        lo, hi = 0, len(hashes) - 1  # block lo is held (checked by `match`)
        if held(hi):
            return len(hashes)
        while hi - lo > _GAP_SPAN:
            mid = (lo + hi) // 2
            if held(mid):
                lo = mid
            else:
                hi = mid
        return hi

    def _masks_of(self, hashes: OwnHashes) -> np.ndarray:
        """The mask words (n, W) of each hash's slot (zeros where not indexed), up to the
        first hash that is in no bucket of its chain; rows after it are cut off."""
        table = self._own
        slots = table.find_many(hashes, cut=True)
        masks = np.frombuffer(table.masks, dtype=np.uint64).reshape(-1, table.words)
        out = np.take(masks, slots, axis=0)
        if slots.size and slots.min() < 0:
            out[slots < 0] = 0
        return out

    def _depths(self, masks: np.ndarray) -> dict[ReplicaId, int]:
        """Each replica's leading depth from the mask words (n, W) of a chain's blocks."""
        out: dict[ReplicaId, int] = {}
        ids = self._slot_ids
        n = masks.shape[0]
        if n == 0:
            return out
        for word in range(masks.shape[1]):
            held = np.bitwise_and.accumulate(masks[:, word])
            drops = np.flatnonzero(held[1:] != held[:-1])
            values = held[np.append(drops, n - 1)].tolist()  # each run's last row
            depths = [*(drops + 1).tolist(), n]
            after = 0
            for i in range(len(values) - 1, -1, -1):
                gone, after = values[i] & ~after, values[i]
                while gone:
                    low = gone & -gone
                    rid = ids[word * 64 + low.bit_length() - 1]
                    if rid is not None:
                        out[rid] = depths[i]
                    gone ^= low
        return out

    def replicas(self) -> list[ReplicaId]:
        return list(self._replicas)

    def seq_of(self, replica_id: ReplicaId) -> tuple[str, int] | None:
        """(epoch, last seq) the index holds for a replica, or None."""
        rep = self._replicas.get(replica_id)
        return None if rep is None else (rep.epoch, rep.last_seq)

    def stats(self) -> IndexStats:
        """Counts and memory; O(distinct blocks) for the open replicas: call it at metrics
        cadence, not per request."""
        n = self._n
        return IndexStats(
            replicas=len(self._replicas),
            blocks=self._entries,
            distinct_hashes=self._own.live,
            skipped_blocks=n.skipped_blocks,
            skipped_events=n.skipped_events,
            unknown_removals=n.unknown_removals,
            stale_batches=n.stale_batches,
            resets=n.resets,
            dumps_requested=n.dumps_requested,
            evicted_blocks=n.evicted_blocks,
            open_replicas=self._open_replicas(),
            memory_bytes=self._own.nbytes()
            + sum(r.engine_to_own.nbytes() for r in self._replicas.values()),
        )

    # -- internals -------------------------------------------------------------------------

    def _open_replicas(self) -> int:
        """Replicas holding a block whose parent they do not hold."""
        table = self._own
        w = table.words
        keys = np.frombuffer(table.keys, dtype=np.uint64)
        parents = np.frombuffer(table.parents, dtype=np.uint32)
        masks = np.frombuffer(table.masks, dtype=np.uint64).reshape(-1, w)
        child = np.flatnonzero((keys > 0) & (parents != NO_PARENT) & masks.any(axis=1))
        parent = parents[child].astype(np.int64)
        parent_masks = np.zeros((child.size, w), dtype=np.uint64)
        known = parent < keys.size
        parent_masks[known] = masks[parent[known]]
        lacking = np.bitwise_or.reduce(masks[child] & ~parent_masks, axis=0)
        return sum(int(x).bit_count() for x in lacking.tolist()) if child.size else 0

    def _add_replica(self, rid: ReplicaId, epoch: str, seq: int) -> IndexedReplica:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._slot_ids[slot] = rid
        else:
            slot = len(self._slot_ids)
            self._slot_ids.append(rid)
            if slot >= 64 * self._own.words:
                self._own.rebuild(self._own.buckets, self._own.words + 1)
        rep = IndexedReplica(slot=slot, word=slot >> 6, bit=1 << (slot & 63), epoch=epoch,
                             last_seq=seq)
        self._replicas[rid] = rep
        return rep

    def _mark(self, rep: IndexedReplica) -> None:
        """Keep `rep`'s bit in `_open` up to date after its events."""
        if rep.engine_to_own.closed:
            self._open &= ~(1 << rep.slot)
        else:
            self._open |= 1 << rep.slot

    def _reset(self, rep: IndexedReplica, epoch: str) -> None:
        self._clear(rep)
        rep.epoch = epoch
        rep.floor_seq = -1

    def _store(self, rep: IndexedReplica, event: BlockStored, tally: ApplyTally) -> None:
        engine_hashes = event.block_hashes
        parent: OwnBlockHash | None = None
        parent_eh, up = event.parent_block_hash, ROOT
        if parent_eh is not None:
            up = rep.engine_to_own.find(parent_eh)
            if up < 0:
                self._skip(len(engine_hashes), tally)
                return
            parent = OwnBlockHash(rep.engine_to_own.own[up])
        bs = event.block_size
        n = min(len(engine_hashes), len(event.token_ids) // bs) if bs > 0 else 0
        if n < len(engine_hashes):  # malformed: fewer tokens than blocks; index what we can
            self._skip(len(engine_hashes) - n, tally)
        if n == 0:
            return
        tokens = event.token_ids
        tokens = tokens if len(tokens) == n * bs else tokens[: n * bs]
        engine_hashes = engine_hashes if n == len(engine_hashes) else engine_hashes[:n]
        if n >= _BULK_BLOCKS:
            keys = np.maximum(self._hasher(tokens, bs, event.lora_name, parent), _TWO)
            if not self._insert_bulk(rep, engine_hashes, keys, parent, up):
                if parent_eh is not None:  # entry numbers may have moved (a compaction)
                    up = rep.engine_to_own.find(parent_eh)
                self._insert(rep, engine_hashes, keys.tolist(), parent, up)
        else:
            owns = self._hasher.ints(tokens, bs, event.lora_name, parent)
            self._insert(rep, engine_hashes, owns, parent, up)
        tally.stored += n

    def _skip(self, blocks: int, tally: ApplyTally) -> None:
        tally.skipped += blocks
        self._n.skipped_blocks += blocks
        self._n.skipped_events += 1

    def _insert_bulk(
        self, rep: IndexedReplica, engine_hashes: Sequence[int], keys: OwnHashes,
        parent: OwnBlockHash | None, up: int,
    ) -> bool:
        """`_insert` for a chain of new blocks, vectorised; False (and nothing changed) where
        the chain is not that plain case (an engine hash or own block already held by this
        replica, a repeat inside the chain, hashes past 64 bits): `_insert` then does it."""
        table, e2o = self._own, rep.engine_to_own
        table.ensure_room(keys.size)  # before taking slots: a rebuild moves them
        if np.unique(keys).size != keys.size:
            return False
        slots = table.find_many(keys)
        w, word, bit = table.words, rep.word, np.uint64(rep.bit)
        masks = np.frombuffer(table.masks, dtype=np.uint64).reshape(-1, w)
        old = slots >= 0
        if (masks[slots[old], word] & bit).any():
            return False
        del masks
        try:
            if not e2o.add_many(engine_hashes, keys, up):
                return False
        except OverflowError:  # an engine hash past 64 bits: `_insert` folds it
            return False
        new = np.flatnonzero(~old)
        if new.size:
            slots[new] = table.place_many(keys[new])
        masks = np.frombuffer(table.masks, dtype=np.uint64).reshape(-1, w)
        parents = np.frombuffer(table.parents, dtype=np.uint32)
        parent_slot = NO_PARENT if parent is None else table.find(own_key(parent))
        parents[slots[0]] = NO_PARENT if parent_slot < 0 else parent_slot
        parents[slots[1:]] = slots[:-1]
        rows = masks[slots]
        table.live += int((~rows.any(axis=1)).sum())
        masks[slots, word] = rows[:, word] | bit
        del masks, parents
        self._entries += keys.size
        self._evict_over(rep)
        return True

    def _evict_over(self, rep: IndexedReplica) -> None:
        over = len(rep.engine_to_own) - self._max_blocks
        if over > 0:
            self._remove(rep, rep.engine_to_own.oldest(over), ApplyTally())
            self._n.evicted_blocks += over

    def _insert(
        self,
        rep: IndexedReplica,
        engine_hashes: Sequence[int],
        owns: Sequence[OwnBlockHash],
        parent: OwnBlockHash | None,
        up: int,
    ) -> None:
        """`rep` holds `owns` (a chain after `parent`, which it holds as entry `up` of its
        engine map; ROOT for none) under `engine_hashes`."""
        table, e2o = self._own, rep.engine_to_own
        table.ensure_room(len(owns))
        w, word, bit = table.words, rep.word, rep.bit
        masks = table.masks
        parent_slot = NO_PARENT if parent is None else table.find(own_key(parent))
        if parent_slot < 0:
            parent_slot = NO_PARENT
        added = 0
        for eh, oh in zip(engine_hashes, owns):
            key = own_key(oh)
            e = e2o.find(eh)
            if e >= 0:
                up = e
                old = e2o.own[e]
                if old == key:  # stored again: nothing changes
                    parent_slot = table.find(key)
                    continue
                self._drop_own(rep, OwnBlockHash(old))
                e2o.set(e, key)
            else:
                up = e2o.add(eh, key, up)
                added += 1
            slot = table.find(key)
            if slot < 0:
                slot = table.add(key, parent_slot)
            else:
                table.parents[slot] = parent_slot  # the same, or a LOST_PARENT found again
            at = slot * w + word
            m = masks[at]
            if m & bit:
                rep.dups[OwnBlockHash(key)] = rep.dups.get(OwnBlockHash(key), 0) + 1
            else:
                if not m and (w == 1 or table.is_empty(slot)):
                    table.live += 1
                masks[at] = m | bit
            parent_slot = slot
        self._entries += added
        self._evict_over(rep)

    def _remove(self, rep: IndexedReplica, engine_hashes: Sequence[int], tally: ApplyTally) -> None:
        e2o = rep.engine_to_own
        for eh in engine_hashes:
            oh = e2o.pop(eh)
            if oh is None:
                self._n.unknown_removals += 1
                continue
            self._drop_own(rep, oh)
            self._entries -= 1
            tally.removed += 1

    def _drop_own(self, rep: IndexedReplica, key: OwnBlockHash) -> None:
        """`rep` holds `key` under one engine hash fewer; releases it at the last."""
        extra = rep.dups.get(key)
        if extra:
            if extra == 1:
                del rep.dups[key]
            else:
                rep.dups[key] = extra - 1
            return
        table = self._own
        slot = table.find(key)
        if slot < 0:  # pragma: no cover - an entry always has its own slot
            return
        at = slot * table.words + rep.word
        table.masks[at] &= ~rep.bit
        if table.is_empty(slot):
            table.release(slot)

    def _clear(self, rep: IndexedReplica) -> None:
        table = self._own
        w, word, keep = table.words, rep.word, ~rep.bit
        masks = table.masks
        for key in rep.engine_to_own.owns():
            slot = table.find(key)
            if slot < 0:
                continue
            at = slot * w + word
            m = masks[at]
            if m & rep.bit:
                masks[at] = m & keep
                if table.is_empty(slot):
                    table.release(slot)
        self._entries -= len(rep.engine_to_own)
        rep.engine_to_own.clear()
        rep.dups.clear()
