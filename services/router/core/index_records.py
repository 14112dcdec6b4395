"""The prefix index's per-replica records and counters (pure, no I/O).

`PrefixIndex` (index.py) owns the algorithm; these are the plain records it keeps per replica
and per `apply`, apart so the index module holds only the sequencing, ingest and match logic.
Its array-backed tables (`OwnTable`, `EngineMap`) are in index_tables.py.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.router.core.index_tables import EngineMap
from services.router.core.types import OwnBlockHash


@dataclass(slots=True)
class IndexedReplica:
    """What the index holds for one replica: its slot, mask word and bit, sequencing, and
    its engine hash map."""

    slot: int
    word: int
    bit: int
    epoch: str
    last_seq: int
    floor_seq: int = -1
    dump_pending: bool = False
    engine_to_own: EngineMap = field(default_factory=EngineMap)
    # own hash -> how many engine hashes beyond the first map to it on this replica (rare).
    dups: dict[OwnBlockHash, int] = field(default_factory=dict)


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
