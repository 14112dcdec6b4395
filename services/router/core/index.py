"""KV prefix index: which replicas hold how many leading blocks of a request (pure, no I/O).

Built from the replicas' KV event batches, keyed by the router's own chained hash (`hashing`),
so replicas whose engines hash differently meet on the same keys. Per replica,
`engine hash -> own hash` resolves parents and removals (`dups` counts the rare own hash held
under several engine hashes).

Representation: `own hash -> int bitmask of replica slots` (replica ids interned to small
ints; slots reused). A one-bit mask (most blocks sit on one replica) is always that slot's
single shared int object: no int per block, and `match` skips the AND by an identity test.

Match: a dict lookup in a large CPython dict is memory-bound (100-400 ns), so walking a
1,024-block prompt costs 0.2-0.4 ms. A replica whose cached set is prefix-closed (every held
block's parent held too; vLLM and SGLang evict tail-first, so this is the normal state) holds
block i of a chain only if it holds blocks 0..i-1, so its depth is found by bisection (~log2 n
lookups per distinct depth). The index knows which replicas are closed by counting, per
replica, held blocks whose parent it lacks (`orphans`), from each block's parent (`_parent`,
global: the own hash fixes it) and each replica's held-children counts (`kids`). Replicas with
orphans are walked block by block, so `match` is exact either way.

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

from collections.abc import Iterable, Sequence

from basalt.ids import ReplicaId
from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEventBatchData
from services.router.core.hashing import (
    BlockHasher,
    HasherFactory,
    chain_bytes,
    default_hasher,
    tokens_to_bytes,
)
from services.router.core.index_records import (
    ApplyTally,
    IndexCounters,
    IndexedReplica,
    memory_estimate,
)
from services.router.core.types import ApplyResult, IndexStats, OwnBlockHash

__all__ = ["DEFAULT_MAX_BLOCKS_PER_REPLICA", "ApplyResult", "IndexStats", "PrefixIndex"]

# 2^18 blocks is 4M tokens at block size 16: more than any one replica's KV cache today.
DEFAULT_MAX_BLOCKS_PER_REPLICA = 1 << 18


class PrefixIndex:
    """Prefix index over every replica this router knows, of every deployment (the router
    builds one; a deployment's candidates are filtered before matching, and block hashes
    differ by LoRA and block size). Not thread-safe; no I/O."""

    __slots__ = (
        "_entries",
        "_free_slots",
        "_hasher",
        "_masks",
        "_max_blocks",
        "_n",
        "_open",
        "_parent",
        "_replicas",
        "_slot_bits",
        "_slot_ids",
    )

    def __init__(self, seed: int = 0, hash_fn: HasherFactory = default_hasher,
                 max_blocks_per_replica: int = DEFAULT_MAX_BLOCKS_PER_REPLICA) -> None:
        if max_blocks_per_replica < 1:
            raise ValueError("max_blocks_per_replica must be at least 1")
        self._max_blocks = max_blocks_per_replica
        self._hasher = BlockHasher(seed, hash_fn)
        self._masks: dict[OwnBlockHash, int] = {}
        # own hash -> own hash of its parent, for every indexed block that has one.
        self._parent: dict[OwnBlockHash, OwnBlockHash] = {}
        # Slots of replicas that are not prefix-closed (orphans > 0).
        self._open = 0
        self._replicas: dict[ReplicaId, IndexedReplica] = {}
        self._slot_ids: list[ReplicaId | None] = []
        # slot -> its one-bit mask; the same int object every one-bit mask in _masks uses.
        self._slot_bits: list[int] = []
        self._free_slots: list[int] = []
        self._entries = 0
        self._n = IndexCounters()

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
        return ApplyResult(False, True, False, tally.stored, 0, tally.skipped)

    def remove_replica(self, replica_id: ReplicaId) -> bool:
        """Forget a replica (its record expired); False when it was not known."""
        rep = self._replicas.pop(replica_id, None)
        if rep is None:
            return False
        self._clear(rep)
        self._slot_ids[rep.slot] = None
        self._free_slots.append(rep.slot)
        return True

    # -- query -----------------------------------------------------------------------------

    def match(self, own_hashes: Sequence[OwnBlockHash]) -> dict[ReplicaId, int]:
        """Per replica, how many leading blocks of `own_hashes` it holds (only replicas > 0).

        `own_hashes` is one chain, as `hasher` returns it for a prompt."""
        if not own_hashes:
            return {}
        first = self._masks.get(own_hashes[0], 0)
        out: dict[ReplicaId, int] = {}
        if not first:
            return out
        walk = first & self._open
        if first ^ walk:
            self._bisect(own_hashes, first ^ walk, out)
        if walk:
            self._walk(own_hashes, walk, out)
        return out

    def _bisect(self, hashes: Sequence[OwnBlockHash], bits: int, out: dict[ReplicaId, int]) -> None:
        """Depths of prefix-closed replicas `bits`: holders of block i nest as i grows, so
        split [lo, hi) only while the holder sets at its ends differ."""
        get = self._masks.get
        stack = [(0, len(hashes), bits, 0)]  # (lo, hi, holders of block lo, of block hi)
        while stack:
            lo, hi, at_lo, at_hi = stack.pop()
            if at_lo == at_hi:
                continue
            if hi - lo == 1:
                self._emit(at_lo ^ at_hi, hi, out)
                continue
            mid = (lo + hi) // 2
            at_mid = get(hashes[mid], 0) & at_lo
            stack.append((mid, hi, at_mid, at_hi & at_mid))
            stack.append((lo, mid, at_lo, at_mid))

    def _walk(self, hashes: Sequence[OwnBlockHash], mask: int, out: dict[ReplicaId, int]) -> None:
        """Depths of replicas `mask`, block by block: AND the masks, stop when none is left."""
        get = self._masks.get
        mask = self._canonical(mask)
        for depth, h in enumerate(hashes):
            x = get(h, 0)
            if x is mask:  # one-bit masks are shared objects: same replica, nothing to AND
                continue
            m = mask & x
            if m != mask:
                self._emit(mask ^ m, depth, out)
                if not m:
                    return
                mask = self._canonical(m)
        self._emit(mask, len(hashes), out)

    def replicas(self) -> list[ReplicaId]:
        return list(self._replicas)

    def seq_of(self, replica_id: ReplicaId) -> tuple[str, int] | None:
        """(epoch, last seq) the index holds for a replica, or None."""
        rep = self._replicas.get(replica_id)
        return None if rep is None else (rep.epoch, rep.last_seq)

    def stats(self) -> IndexStats:
        n = self._n
        return IndexStats(
            replicas=len(self._replicas),
            blocks=self._entries,
            distinct_hashes=len(self._masks),
            skipped_blocks=n.skipped_blocks,
            skipped_events=n.skipped_events,
            unknown_removals=n.unknown_removals,
            stale_batches=n.stale_batches,
            resets=n.resets,
            dumps_requested=n.dumps_requested,
            evicted_blocks=n.evicted_blocks,
            open_replicas=self._open.bit_count(),
            memory_bytes=memory_estimate(self._masks, self._parent, self._replicas.values()),
        )

    # -- internals -------------------------------------------------------------------------

    def _emit(self, bits: int, depth: int, out: dict[ReplicaId, int]) -> None:
        ids = self._slot_ids
        while bits:
            low = bits & -bits
            rid = ids[low.bit_length() - 1]
            if rid is not None:
                out[rid] = depth
            bits ^= low

    def _canonical(self, mask: int) -> int:
        """The shared object for a one-bit mask; other masks as they are."""
        if mask & (mask - 1):
            return mask
        return self._slot_bits[mask.bit_length() - 1]

    def _add_replica(self, rid: ReplicaId, epoch: str, seq: int) -> IndexedReplica:
        if self._free_slots:
            slot = self._free_slots.pop()
            self._slot_ids[slot] = rid
        else:
            slot = len(self._slot_ids)
            self._slot_ids.append(rid)
            self._slot_bits.append(1 << slot)
        rep = IndexedReplica(slot=slot, bit=self._slot_bits[slot], epoch=epoch, last_seq=seq)
        self._replicas[rid] = rep
        return rep

    def _reset(self, rep: IndexedReplica, epoch: str) -> None:
        self._clear(rep)
        rep.epoch = epoch
        rep.floor_seq = -1

    def _store(self, rep: IndexedReplica, event: BlockStored, tally: ApplyTally) -> None:
        engine_hashes = event.block_hashes
        parent: OwnBlockHash | None = None
        if event.parent_block_hash is not None:
            parent = rep.engine_to_own.get(event.parent_block_hash)
            if parent is None:
                self._skip(len(engine_hashes), tally)
                return
        bs = event.block_size
        n = min(len(engine_hashes), len(event.token_ids) // bs) if bs > 0 else 0
        if n < len(engine_hashes):  # malformed: fewer tokens than blocks; index what we can
            self._skip(len(engine_hashes) - n, tally)
        if n == 0:
            return
        tokens = event.token_ids
        data = tokens_to_bytes(tokens if len(tokens) == n * bs else tokens[: n * bs])
        owns = chain_bytes(data, bs, n, self._hasher.template(event.lora_name), parent)
        self._insert(rep, engine_hashes, owns, parent)
        tally.stored += n

    def _skip(self, blocks: int, tally: ApplyTally) -> None:
        tally.skipped += blocks
        self._n.skipped_blocks += blocks
        self._n.skipped_events += 1

    def _insert(
        self,
        rep: IndexedReplica,
        engine_hashes: Sequence[int],
        owns: Sequence[OwnBlockHash],
        parent: OwnBlockHash | None,
    ) -> None:
        """`rep` holds `owns` (a chain after `parent`, which it holds) under `engine_hashes`."""
        masks, parents, kids, e2o = self._masks, self._parent, rep.kids, rep.engine_to_own
        bit, added = rep.bit, 0
        for eh, oh in zip(engine_hashes, owns):
            old = e2o.get(eh)
            if old is not None:
                if old == oh:  # stored again: nothing changes
                    parent = oh
                    continue
                self._drop_own(rep, old)
                added -= 1
            e2o[eh] = oh
            added += 1
            m = masks.get(oh, 0)
            if m & bit:
                rep.dups[oh] = rep.dups.get(oh, 0) + 1
            else:
                masks[oh] = m | bit if m else bit
                if parent is not None:
                    if not m:
                        parents[oh] = parent
                    kids[parent] = kids.get(parent, 0) + 1
                adopted = kids.get(oh)  # held children that had lost this parent
                if adopted:
                    self._set_orphans(rep, rep.orphans - adopted)
            parent = oh
        self._entries += added
        over = len(e2o) - self._max_blocks
        if over > 0:
            oldest = [eh for eh, _ in zip(e2o, range(over))]
            self._remove(rep, oldest, ApplyTally())
            self._n.evicted_blocks += over

    def _remove(self, rep: IndexedReplica, engine_hashes: Sequence[int], tally: ApplyTally) -> None:
        e2o = rep.engine_to_own
        for eh in engine_hashes:
            oh = e2o.pop(eh, None)
            if oh is None:
                self._n.unknown_removals += 1
                continue
            self._drop_own(rep, oh)
            self._entries -= 1
            tally.removed += 1

    def _drop_own(self, rep: IndexedReplica, oh: OwnBlockHash) -> None:
        """`rep` holds `oh` under one engine hash fewer; releases it at the last."""
        extra = rep.dups.get(oh)
        if extra:
            if extra == 1:
                del rep.dups[oh]
            else:
                rep.dups[oh] = extra - 1
            return
        masks, kids = self._masks, rep.kids
        orphans = rep.orphans + kids.get(oh, 0)  # its held children lose their parent
        parent = self._parent.get(oh)
        if parent is not None:
            left = kids[parent] - 1
            if left:
                kids[parent] = left
            else:
                del kids[parent]
            if not masks.get(parent, 0) & rep.bit:
                orphans -= 1  # it was an orphan itself
        m = masks.get(oh, 0) & ~rep.bit
        if m:
            masks[oh] = self._canonical(m)
        else:
            del masks[oh]
            self._parent.pop(oh, None)
        self._set_orphans(rep, orphans)

    def _set_orphans(self, rep: IndexedReplica, orphans: int) -> None:
        assert orphans >= 0, "orphan count went negative"
        rep.orphans = orphans
        if orphans:
            self._open |= rep.bit
        else:
            self._open &= ~rep.bit

    def _clear(self, rep: IndexedReplica) -> None:
        masks, parents = self._masks, self._parent
        keep = ~rep.bit
        canonical = self._canonical
        for oh in rep.engine_to_own.values():
            m = masks.get(oh, 0) & keep
            if m:
                masks[oh] = canonical(m)
            elif oh in masks:
                del masks[oh]
                parents.pop(oh, None)
        self._entries -= len(rep.engine_to_own)
        rep.engine_to_own.clear()
        rep.dups.clear()
        rep.kids.clear()
        self._set_orphans(rep, 0)
