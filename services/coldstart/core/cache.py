"""Which revisions to evict so that a new one fits the budget (no I/O).

The cache is content-addressed: a revision is a list of blobs (sha256 -> size), and two
revisions that share a file share its blob. Evicting a revision frees only the blobs no
remaining revision holds. Whole revisions go, least recently used first, never one in use.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field


@dataclass(slots=True, frozen=True)
class Held:
    """One revision in the cache: its blobs and when a replica last asked for it."""

    key: str
    blobs: Mapping[str, int]
    last_used: float

    @property
    def bytes(self) -> int:
        return sum(self.blobs.values())


class NoRoom(Exception):
    """The budget cannot hold the new revision even after evicting every unused one."""

    def __init__(self, needed: int, budget: int, in_use: Iterable[str]) -> None:
        self.needed, self.budget, self.in_use = needed, budget, sorted(in_use)
        super().__init__(
            f"needs {needed} bytes of a {budget}-byte cache; revisions in use hold the rest "
            f"({', '.join(self.in_use) or 'none'})")


@dataclass(slots=True)
class Eviction:
    evict: list[str] = field(default_factory=list)
    freed: int = 0


def blob_bytes(revisions: Iterable[Held]) -> dict[str, int]:
    """Every blob held by any of `revisions`, once."""
    out: dict[str, int] = {}
    for rev in revisions:
        out.update(rev.blobs)
    return out


def plan_eviction(held: Iterable[Held], incoming: Iterable[tuple[str, int]], budget: int,
                  in_use: frozenset[str], stray_bytes: int = 0) -> Eviction:
    """The revisions to evict (oldest use first) so that `incoming` files (sha256, size) fit
    in `budget`. Files already stored cost nothing; an unknown hash ("") counts in full.
    `stray_bytes` are partial downloads and other bytes on disk that no revision names.
    Raises NoRoom when evicting every revision not in use is not enough."""
    revs = {r.key: r for r in held}
    stored = blob_bytes(revs.values())
    new, seen = 0, set(stored)
    for sha, size in incoming:
        if not sha or sha not in seen:
            new += size
            seen.add(sha)
    used = sum(stored.values()) + stray_bytes
    out = Eviction()
    if used + new <= budget:
        return out
    for rev in sorted(revs.values(), key=lambda r: (r.last_used, r.key)):
        if rev.key in in_use:
            continue
        out.evict.append(rev.key)
        remaining = blob_bytes(r for k, r in revs.items() if k not in out.evict)
        out.freed = sum(stored.values()) - sum(remaining.values())
        if used - out.freed + new <= budget:
            return out
    raise NoRoom(new, budget, [k for k in revs if k in in_use])


def in_use(replica_keys: Iterable[str], pins: Mapping[str, float], now: float) -> frozenset[str]:
    """Revisions in use: named by a live replica on this node, or pinned (a fetch for a
    replica whose record has not appeared yet) until the pin's expiry time."""
    return frozenset(replica_keys) | frozenset(k for k, until in pins.items() if until > now)


def tier(fetched_bytes: int, resident_share: float, warm_at: float = 0.9) -> str:
    """Where a start found its weights: "source" (this start fetched some), "warm" (at least
    `warm_at` of them in memory), else "node" (the node's disk)."""
    if fetched_bytes > 0:
        return "source"
    return "warm" if resident_share >= warm_at else "node"


def warm_set(held: Iterable[Held], in_use: frozenset[str], budget: int) -> list[str]:
    """The revisions to keep in memory (the warm tier): in use first, then most recently
    used, while their bytes fit `budget`."""
    order = sorted(held, key=lambda r: (r.key not in in_use, -r.last_used, r.key))
    out, total = [], 0
    for rev in order:
        if total + rev.bytes <= budget:
            out.append(rev.key)
            total += rev.bytes
    return out
