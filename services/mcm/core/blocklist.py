"""Blocked resources after provisioning failures, SkyPilot-style: a failure blocks the cloud,
region, zone or cluster its scope names until a time passes (no I/O; `now` comes in).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from services.mcm.core.inventory import Cluster, Scope

__all__ = ["Block", "Blocklist", "Scope"]


@dataclass(slots=True, frozen=True)
class Block:
    """Nothing under `key` at `scope` is placed on until `until` (same clock as `now`)."""

    scope: Scope
    key: str
    until: float
    reason: str = ""

    def covers(self, cluster: Cluster) -> bool:
        return cluster.key(self.scope) == self.key

    def active(self, now: float) -> bool:
        return now < self.until


@dataclass(slots=True)
class Blocklist:
    """Current blocks, one per (scope, key); a newer failure extends, never shortens, a block."""

    blocks: dict[tuple[Scope, str], Block] = field(default_factory=dict)

    def block(
        self, error_scope: Scope, cluster: Cluster, now: float, ttl: float, reason: str = ""
    ) -> Block:
        """Block the part of the world `error_scope` says, around `cluster`, for `ttl` seconds."""
        key = cluster.key(error_scope)
        new = Block(error_scope, key, now + ttl, reason)
        old = self.blocks.get((error_scope, key))
        if old is not None and old.active(now) and old.until > new.until:
            new = Block(error_scope, key, old.until, reason or old.reason)
        self.blocks[(error_scope, key)] = new
        return new

    def blocking(self, cluster: Cluster, now: float) -> Block | None:
        """The widest active block that covers `cluster`, or None."""
        for scope in Scope:
            found = self.blocks.get((scope, cluster.key(scope)))
            if found is not None and found.active(now):
                return found
        return None

    def is_blocked(self, cluster: Cluster, now: float) -> bool:
        return self.blocking(cluster, now) is not None

    def active(self, now: float) -> list[Block]:
        """Blocks still in force, soonest to expire first."""
        return sorted((b for b in self.blocks.values() if b.active(now)),
                      key=lambda b: (b.until, b.scope.value, b.key))

    def prune(self, now: float) -> None:
        """Forget expired blocks (they already stopped applying; this only frees memory)."""
        self.blocks = {k: b for k, b in self.blocks.items() if b.active(now)}
