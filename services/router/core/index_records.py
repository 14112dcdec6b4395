"""The prefix index's per-replica records, counters and memory estimate (pure, no I/O).

`PrefixIndex` (index.py) owns the algorithm; these are the plain records it keeps per replica
and per `apply`, apart so the index module holds only the sequencing, ingest and match logic.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from services.router.core.types import OwnBlockHash


@dataclass(slots=True)
class IndexedReplica:
    """What the index holds for one replica: its slot and bit, sequencing, and hash maps."""

    slot: int
    bit: int
    epoch: str
    last_seq: int
    floor_seq: int = -1
    dump_pending: bool = False
    # Held blocks whose parent this replica does not hold; 0 = prefix-closed.
    orphans: int = 0
    # engine hash (EngineBlockHash) -> own hash.
    engine_to_own: dict[int, OwnBlockHash] = field(default_factory=dict)
    # own hash -> how many engine hashes beyond the first map to it on this replica.
    dups: dict[OwnBlockHash, int] = field(default_factory=dict)
    # own hash -> how many blocks this replica holds whose parent it is (entries > 0 only).
    kids: dict[OwnBlockHash, int] = field(default_factory=dict)


@dataclass(slots=True)
class IndexCounters:
    """Running totals the index reports in `IndexStats`."""

    skipped_blocks: int = 0
    skipped_events: int = 0
    evicted_blocks: int = 0
    unknown_removals: int = 0
    stale_batches: int = 0
    resets: int = 0
    dumps_requested: int = 0


@dataclass(slots=True)
class ApplyTally:
    """Blocks stored, removed and skipped by one `apply` or `apply_dump`."""

    stored: int = 0
    removed: int = 0
    skipped: int = 0


def memory_estimate(
    masks: Mapping[OwnBlockHash, int],
    parents: Mapping[OwnBlockHash, OwnBlockHash],
    replicas: Iterable[IndexedReplica],
) -> int:
    """Dict tables plus int objects (keys, multi-bit masks, engine hashes, own hashes);
    O(distinct blocks): call it at metrics cadence, not per request."""
    int_size = sys.getsizeof(1 << 63)
    shared = len(masks) - sum(1 for m in masks.values() if m & (m - 1))
    total = sys.getsizeof(masks) + (2 * len(masks) - shared) * int_size
    total += sys.getsizeof(parents)
    for rep in replicas:
        total += sys.getsizeof(rep.engine_to_own) + sys.getsizeof(rep.dups)
        total += sys.getsizeof(rep.kids) + len(rep.engine_to_own) * 2 * int_size
    return total
