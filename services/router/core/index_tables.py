"""The prefix index's array-backed tables (pure, no I/O).

`PrefixIndex` (index.py) owns the algorithm; these are the per-block structures it keeps,
apart so the index module holds only the sequencing, ingest and match logic. Every one is a
flat `array` (C storage, no Python object per block): a CPython dict costs ~100 bytes per
entry, these 20-40.

`OwnTable`: own hash -> replica bitmask (W 64-bit words per slot) and parent slot. Buckets of
8 slots, placed by the hash's high bits (any bucket count, so it grows by 1.5x, not 2x);
a full bucket overflows into the next. A key whose mask goes to zero stays in its slot, dead,
until the next rebuild (and one that a live block names as parent, after it too), so a slot
names one own hash for as long as a parent slot may name it. Own hashes 0 (the empty marker)
and 1 are stored as 2: a collision, which costs at most a routing choice.

`EngineMap`: one replica's engine hash -> own hash, in insertion order (for eviction of the
oldest), as CPython's compact dict does it: entries appended to two arrays, an open-addressing
index of entry numbers beside them, dead entries compacted away in bulk. Beside each entry,
the entry of its parent block (`up`) and how many live entries name it as parent (`kids`), so
that `orphans` counts the live entries whose parent entry is gone: 0 (and not `dirty`) means
the replica is prefix-closed, which lets `match` bisect it. The count may be high (a parent
stored again under a new entry does not adopt the old one's children), never low; `dirty`
marks the rare case it could be (an engine hash remapped to another own hash) until a clear.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator, Sequence

import numpy as np
import numpy.typing as npt

from services.router.core.types import OwnBlockHash

BUCKET = 8
EMPTY = 0
NO_PARENT = 0xFFFFFFFF  # a root block
LOST_PARENT = 0xFFFFFFFE  # its parent was indexed once and is gone (every replica lacks it)
_S32, _S56 = np.uint64(32), np.uint64(56)
# (1 << 8c) * _COLUMN_OF >> 56 == c for c in 0..7 (lower terms stay below bit 56).
_COLUMN_OF = np.uint64(sum(c << (56 - 8 * c) for c in range(BUCKET)))
_MAX_LOAD = 0.75  # of own slots in use (live + tombstones) before a rebuild
_U64 = (1 << 64) - 1
_GOLDEN = 0x9E3779B97F4A7C15
ROOT = 0xFFFFFFFF  # `EngineMap.up` of a root block
GONE = 0xFFFFFFFE  # `EngineMap.up` of a block whose parent entry was compacted away (dead)
_MAX_KIDS = 0xFFFF


def own_key(h: int) -> int:
    """The table key of an own hash (0 is the empty marker; 1 is kept spare)."""
    return h if h > 1 else 2


class OwnTable:
    """Own hash -> replica mask words and parent slot (see the module docstring)."""

    __slots__ = ("buckets", "keys", "live", "masks", "parents", "used", "words")

    def __init__(self, words: int = 1, buckets: int = 128) -> None:
        self.words = words
        self.buckets = buckets
        self.keys = array("Q", bytes(8 * buckets * BUCKET))
        self.masks = array("Q", bytes(8 * buckets * BUCKET * words))
        self.parents = array("I", [NO_PARENT]) * (buckets * BUCKET)
        self.live = 0
        self.used = 0  # live + tombstones

    def bucket_of(self, key: int) -> int:
        return ((key >> 32) * self.buckets) >> 32

    def find(self, key: int) -> int:
        """The slot of `key`, or -1."""
        keys, b, nb = self.keys, self.bucket_of(key), self.buckets
        while True:
            base = b * BUCKET
            row = keys[base : base + BUCKET]
            if key in row:
                return base + row.index(key)
            if EMPTY in row:
                return -1
            b = b + 1 if b + 1 < nb else 0

    def find_many(self, keys: npt.NDArray[np.uint64], cut: bool = False) -> npt.NDArray[np.intp]:
        """The slots of `keys` (-1 where absent), in one vectorised pass plus one per bucket
        of overflow. With `cut`, the result stops before the first key surely absent (what
        a prefix match needs; rows past it are never resolved)."""
        flat = np.frombuffer(self.keys, dtype=np.uint64)
        rows_of = flat.reshape(self.buckets, BUCKET)
        home = (((keys >> _S32) * np.uint64(self.buckets)) >> _S32).astype(np.intp)
        # Each row's 8 comparison bytes read as one little-endian uint64: zero where the key
        # is not in its home bucket, else 1 << 8*col, which the multiply turns into col.
        hit = (np.take(rows_of, home, axis=0) == keys[:, None]).view("<u8").reshape(-1)
        slots = home * BUCKET + ((hit * _COLUMN_OF) >> _S56).astype(np.intp)
        if hit.all():
            return slots
        missing = hit == 0
        slots[missing] = -1
        end = keys.size
        pending = np.flatnonzero(missing)
        step = 0
        while pending.size:
            at = home[pending] + step
            at[at >= self.buckets] -= self.buckets
            rows = np.take(rows_of, at, axis=0)
            hit = rows == keys[pending][:, None]
            found = hit.any(axis=1)
            slots[pending[found]] = at[found] * BUCKET + hit[found].argmax(axis=1)
            absent = ~found & (rows == EMPTY).any(axis=1)
            if cut and absent.any():
                end = min(end, int(pending[absent][0]))
            pending = pending[~found & ~absent]
            if cut:
                pending = pending[pending < end]
            step += 1
        return slots[:end]

    def place_many(self, keys: npt.NDArray[np.uint64]) -> npt.NDArray[np.intp]:
        """Slots for new, distinct `keys` (none in the table; room ensured), parents unset.
        A bucket's used slots are always a prefix of it, so in each round the keys that fit
        in their bucket go in at once and the rest move on to the next bucket."""
        flat = np.frombuffer(self.keys, dtype=np.uint64)
        rows_of = flat.reshape(self.buckets, BUCKET)
        at_bucket = (((keys >> _S32) * np.uint64(self.buckets)) >> _S32).astype(np.intp)
        slots = np.empty(keys.size, dtype=np.intp)
        todo = np.arange(keys.size)
        while todo.size:
            bucket = at_bucket[todo]
            used = (np.take(rows_of, bucket, axis=0) != EMPTY).sum(axis=1)
            order = np.argsort(bucket, kind="stable")
            sorted_bucket = bucket[order]
            rank = np.arange(todo.size) - np.searchsorted(sorted_bucket, sorted_bucket)
            at = used[order] + rank
            fits = at < BUCKET
            placed = todo[order[fits]]
            slots[placed] = sorted_bucket[fits] * BUCKET + at[fits]
            flat[slots[placed]] = keys[placed]
            todo = todo[order[~fits]]
            at_bucket[todo] += 1
            at_bucket[at_bucket >= self.buckets] = 0
        self.used += keys.size
        return slots

    def ensure_room(self, new_keys: int) -> None:
        """Rebuild (larger, by 1.5x of what is live) unless `new_keys` more keys fit: call it
        before `add`, and before taking slots to hold across the adds (a rebuild moves them)."""
        if self.used + new_keys > _MAX_LOAD * self.buckets * BUCKET:
            need = 1.5 * (self.live + new_keys) / (_MAX_LOAD * BUCKET)
            self.rebuild(max(128, int(need) + 1))

    def add(self, key: int, parent: int) -> int:
        """The slot of a new `key` (not in the table; room ensured), with its parent slot;
        dead (its mask empty) until a bit is set, and counted `live` by the caller then."""
        keys, b, nb = self.keys, self.bucket_of(key), self.buckets
        while True:
            base = b * BUCKET
            row = keys[base : base + BUCKET]
            if EMPTY in row:
                slot = base + row.index(EMPTY)
                keys[slot] = key
                self.parents[slot] = parent
                self.used += 1
                return slot
            b = b + 1 if b + 1 < nb else 0

    def release(self, slot: int) -> None:
        """`slot`'s mask went to zero: it stays, dead, until the next rebuild (storing the
        key again revives it in place, so parent slots naming it stay true)."""
        self.live -= 1

    def is_empty(self, slot: int) -> bool:
        w = self.words
        if w == 1:
            return not self.masks[slot]
        return not any(self.masks[slot * w : slot * w + w])

    def rebuild(self, buckets: int, words: int | None = None) -> None:
        """Rehash the live keys into `buckets` buckets (and `words` mask words, never fewer);
        dead slots are dropped unless a live one names them as parent; parents are
        remapped (a dropped one to LOST_PARENT: that block lacks it everywhere). Vectorised: keys whose home
        bucket has room are placed at once, the overflow one by one."""
        old_keys = np.frombuffer(self.keys, dtype=np.uint64)
        old_w = self.words
        words = old_w if words is None else max(words, old_w)
        all_masks = np.frombuffer(self.masks, dtype=np.uint64).reshape(-1, old_w)
        all_parents = np.frombuffer(self.parents, dtype=np.uint32)
        alive = (old_keys > EMPTY) & all_masks.any(axis=1)
        held = all_parents[alive]
        keep = alive.copy()
        keep[held[held < keep.size]] = True  # dead parents of live blocks stay (dead)
        keep &= old_keys > EMPTY
        live = np.flatnonzero(keep)
        keys = old_keys[live]
        old_masks = all_masks[live]
        parents = all_parents[live]
        n_alive = int(alive.sum())
        del old_keys, all_masks, all_parents
        fresh = OwnTable(words, buckets)
        home = (((keys >> np.uint64(32)) * np.uint64(buckets)) >> np.uint64(32)).astype(np.int64)
        order = np.argsort(home, kind="stable")
        sorted_home = home[order]
        first = np.searchsorted(sorted_home, sorted_home, side="left")
        rank = np.arange(sorted_home.size) - first
        slots = np.empty(keys.size, dtype=np.int64)
        fits = rank < BUCKET
        slots[order[fits]] = sorted_home[fits] * BUCKET + rank[fits]
        fk = np.frombuffer(fresh.keys, dtype=np.uint64)
        fk[slots[order[fits]]] = keys[order[fits]]
        del fk
        fresh.used = int(fits.sum())
        for i in order[~fits].tolist():
            slots[i] = fresh.add(int(keys[i]), NO_PARENT)
        # old slot -> new slot, for the parents
        new_slot = np.full(len(self.keys), LOST_PARENT, dtype=np.uint32)
        new_slot[live] = slots
        mapped = np.where(parents == NO_PARENT, NO_PARENT, LOST_PARENT).astype(np.uint32)
        inside = parents < new_slot.size
        mapped[inside] = new_slot[parents[inside]]
        nm = np.frombuffer(fresh.masks, dtype=np.uint64).reshape(-1, words)
        nm[slots, :old_w] = old_masks
        np.frombuffer(fresh.parents, dtype=np.uint32)[slots] = mapped
        del nm
        self.words, self.buckets = fresh.words, fresh.buckets
        self.keys, self.masks, self.parents = fresh.keys, fresh.masks, fresh.parents
        self.used, self.live = fresh.used, n_alive

    def nbytes(self) -> int:
        return sum(a.itemsize * len(a) for a in (self.keys, self.masks, self.parents))


class EngineMap:
    """One replica's engine hash -> own hash, in insertion order (see the module docstring)."""

    __slots__ = ("dead", "dirty", "eng", "head", "index", "kids", "live", "orphans", "own",
                 "shift", "up")

    def __init__(self) -> None:
        self.eng = array("Q")
        self.own = array("Q")  # 0 = a dead entry (own keys are >= 2)
        self.up = array("I")  # parent entry number, ROOT or GONE
        self.kids = array("H")  # live entries whose `up` is this one (at most _MAX_KIDS)
        self.orphans = 0  # live entries whose parent entry is dead (see the module docstring)
        self.dirty = False
        self.index = array("I", bytes(4 * 64))  # entry number + 1; 0 empty, _TOMB_E removed
        self.shift = 64 - 6
        self.live = 0
        self.dead = 0
        self.head = 0  # entries before it are all dead

    def __len__(self) -> int:
        return self.live

    def _pos(self, eh: int) -> int:
        return ((eh * _GOLDEN) & _U64) >> self.shift

    def find(self, eh: int) -> int:
        """The entry number of `eh`, or -1."""
        index, eng, mask = self.index, self.eng, len(self.index) - 1
        eh &= _U64
        pos = self._pos(eh)
        while True:
            e = index[pos]
            if e == 0:
                return -1
            if e != _TOMB_E and eng[e - 1] == eh:
                return e - 1
            pos = (pos + 1) & mask

    def get(self, eh: int) -> OwnBlockHash | None:
        e = self.find(eh)
        return None if e < 0 else OwnBlockHash(self.own[e])

    @property
    def closed(self) -> bool:
        """Surely prefix-closed: every held block's parent held too."""
        return not self.orphans and not self.dirty

    def add(self, eh: int, oh: int, up: int = ROOT) -> int:
        """Append `eh -> oh` (`eh` not present) with parent entry `up` (live, or ROOT);
        returns its entry number (valid until the next add: a rebuild renumbers)."""
        if (self.live + self.dead + 1) * 4 > len(self.index) * 3:
            up = self._rebuild(1, up)
        eh &= _U64
        self.eng.append(eh)
        self.own.append(oh)
        self.up.append(up)
        self.kids.append(0)
        if up < GONE:
            self._adopt(up)
        self._place(eh, len(self.eng))
        self.live += 1
        return len(self.eng) - 1

    def add_many(self, ehs: Sequence[int], owns: npt.NDArray[np.uint64], up: int = ROOT) -> bool:
        """Append `ehs -> owns` (a chain after entry `up`, live or ROOT) if none of `ehs` is
        present (else change nothing, False)."""
        if (self.live + self.dead + len(ehs)) * 4 > len(self.index) * 3:
            up = self._rebuild(len(ehs), up)
        first = len(self.eng)
        self.eng.extend(array("Q", ehs))  # OverflowError past 64 bits, before any change
        index, eng, mask, shift = self.index, self.eng, len(self.index) - 1, self.shift
        written: list[tuple[int, int]] = []
        for number, eh in enumerate(ehs, first + 1):
            pos = ((eh * _GOLDEN) & _U64) >> shift
            spare = -1
            while True:
                e = index[pos]
                if e == 0:
                    break
                if e == _TOMB_E:
                    if spare < 0:
                        spare = pos
                elif eng[e - 1] == eh:  # held already (or twice in `ehs`): undo
                    for at, was in reversed(written):
                        index[at] = was
                    del eng[first:]
                    return False
                pos = (pos + 1) & mask
            at = pos if spare < 0 else spare
            written.append((at, index[at]))
            index[at] = number
        self.own.frombytes(owns.tobytes())
        n = len(ehs)
        self.up.append(up)
        self.up.frombytes(np.arange(first, first + n - 1, dtype=np.uint32).tobytes())
        self.kids.frombytes(np.ones(n, dtype=np.uint16).tobytes())
        self.kids[-1] = 0
        if up < GONE:
            self._adopt(up)
        self.live += n
        return True

    def _adopt(self, up: int) -> None:
        """One more live entry names entry `up` as parent (past _MAX_KIDS: `dirty`)."""
        kids = self.kids[up]
        if kids < _MAX_KIDS:
            self.kids[up] = kids + 1
        else:
            self.dirty = True

    def set(self, e: int, oh: int) -> None:
        """Entry `e` now names another own hash: its children's parents may be wrong."""
        self.own[e] = oh
        self.dirty = True

    def pop(self, eh: int) -> OwnBlockHash | None:
        index, eng, mask = self.index, self.eng, len(self.index) - 1
        eh &= _U64
        pos = self._pos(eh)
        while True:
            e = index[pos]
            if e == 0:
                return None
            if e != _TOMB_E and eng[e - 1] == eh:
                break
            pos = (pos + 1) & mask
        index[pos] = _TOMB_E
        e -= 1
        oh = self.own[e]
        self.own[e] = 0
        up = self.up[e]
        if up < GONE and self.own[up]:
            if self.kids[up]:  # 0 only once `dirty` (a count past _MAX_KIDS)
                self.kids[up] -= 1
        elif up != ROOT:
            self.orphans -= 1  # counted when its parent went
        self.orphans += self.kids[e]
        self.live -= 1
        self.dead += 1
        return OwnBlockHash(oh)

    def oldest(self, count: int) -> list[int]:
        """The `count` oldest live engine hashes."""
        out: list[int] = []
        own, eng, i = self.own, self.eng, self.head
        while len(out) < count and i < len(eng):
            if own[i]:
                out.append(eng[i])
            elif i == self.head:
                self.head += 1
            i += 1
        return out

    def owns(self) -> Iterator[int]:
        """The own hashes of the live entries (one per entry, repeats included)."""
        return (oh for oh in self.own[self.head :] if oh)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def _place(self, eh: int, number: int) -> None:
        index, mask = self.index, len(self.index) - 1
        pos = self._pos(eh)
        while index[pos] not in (0, _TOMB_E):
            pos = (pos + 1) & mask
        index[pos] = number

    def _rebuild(self, coming: int, up: int = ROOT) -> int:
        """Drop dead entries and size the index for the live ones plus `coming` at most 3/8
        full; returns entry `up` renumbered. Vectorised: in order of home position, linear
        probing puts entry i at max(home_i, slot_(i-1) + 1), a running maximum; the few that
        wrap go one by one."""
        own = np.frombuffer(self.own, dtype=np.uint64)
        eng = np.frombuffer(self.eng, dtype=np.uint64)
        if self.dead:
            keep = own != 0
            number = np.cumsum(keep, dtype=np.int64) - 1
            ups = np.frombuffer(self.up, dtype=np.uint32)[keep]
            inside = ups < GONE
            target = ups[inside].astype(np.int64)
            ups[inside] = np.where(keep[target], number[target], GONE).astype(np.uint32)
            if up < GONE:
                up = int(number[up]) if keep[up] else GONE
            kids = np.frombuffer(self.kids, dtype=np.uint16)[keep]
            eng_kept, own_kept = eng[keep], own[keep]
            del own, eng
            self.eng, self.own = array("Q", eng_kept.tobytes()), array("Q", own_kept.tobytes())
            self.up, self.kids = array("I", ups.tobytes()), array("H", kids.tobytes())
            eng = np.frombuffer(self.eng, dtype=np.uint64)
        else:
            del own
        size = 64
        while size * 3 < (self.live + coming) * 8:
            size *= 2
        self.shift = 64 - (size.bit_length() - 1)
        self.dead = self.head = 0
        index = np.zeros(size, dtype=np.uint32)
        home = ((eng * np.uint64(_GOLDEN)) >> np.uint64(self.shift)).astype(np.int64)
        order = np.argsort(home, kind="stable")
        steps = np.arange(order.size)
        at = np.maximum.accumulate(home[order] - steps) + steps
        fits = at < size
        index[at[fits]] = order[fits] + 1
        wrapped = order[~fits].tolist()
        del eng
        self.index = array("I", index.tobytes())
        for i in wrapped:
            self._place(self.eng[i], i + 1)
        return up

    def nbytes(self) -> int:
        return (8 * (len(self.eng) + len(self.own)) + 4 * (len(self.index) + len(self.up))
                + 2 * len(self.kids))


_TOMB_E = 0xFFFFFFFF
