"""Shared types of the router's pure core: hashes, request and replica views, policy config,
decisions and index results (no I/O). The core's errors are in errors.py.

Every cost in a `CostBreakdown` is in KV blocks, as in Dynamo's KV router: one block of
prefill, one block of decode load, and the configured block-equivalents of a LoRA load and of
a millisecond of network latency are summed into one number; lowest wins.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import NewType

from basalt.ids import ReplicaId
from services.router.core.errors import InvalidPolicyConfig

# The router's own chained hash of one full block (64-bit), independent of any engine's hash.
OwnBlockHash = NewType("OwnBlockHash", int)


class PolicyKind(Enum):
    KV = "kv"
    ROUND_ROBIN = "round_robin"
    LEAST_LOADED = "least_loaded"
    RANDOM = "random"
    SESSION = "session"


@dataclass(slots=True, frozen=True)
class RouteRequest:
    """What a policy knows of one request."""

    num_prompt_tokens: int
    # Full blocks of the prompt, as hashed by `hashing.block_hashes` (len of its result).
    num_blocks: int
    lora_name: str | None = None
    # The client's region, when known; None means no region cost.
    region: str | None = None
    # Affinity key (e.g. a header value) for the `session` policy.
    session_key: str | None = None


@dataclass(slots=True, frozen=True)
class Candidate:
    """A candidate replica as the router last heard of it (record + load report)."""

    replica_id: ReplicaId
    region: str = ""
    zone: str = ""
    loras: frozenset[str] = frozenset()
    kv_block_size: int = 16
    kv_blocks_total: int = 0
    kv_blocks_active: int = 0
    num_running: int = 0
    num_waiting: int = 0
    healthy: bool = True
    # The router skips the replica before this time (e.g. after an error); 0 = never.
    skip_until: float = 0.0

    @property
    def kv_usage(self) -> float:
        """Share of KV blocks in use, 0..1 (0 when the total is unknown)."""
        if self.kv_blocks_total <= 0:
            return 0.0
        return self.kv_blocks_active / self.kv_blocks_total


@dataclass(slots=True, frozen=True)
class RegionLatency:
    """Milliseconds between regions: the table first (either order), else same/remote defaults."""

    table: Mapping[tuple[str, str], float] = field(default_factory=dict)
    same_region_ms: float = 0.0
    remote_ms: float = 50.0

    def ms(self, a: str, b: str) -> float:
        found = self.table.get((a, b))
        if found is None:
            found = self.table.get((b, a))
        if found is not None:
            return found
        return self.same_region_ms if a == b else self.remote_ms


@dataclass(slots=True, frozen=True)
class PolicyConfig:
    """Weights and limits of the routing policies (one per deployment)."""

    kind: PolicyKind = PolicyKind.KV
    # Cost of one block that must be prefilled, relative to one block of decode load.
    # 4 measured better than 1 on both the synthetic chat and the Mooncake trace
    # (`basalt bench routing --overlap-weight W`; docs/benchmarks.md).
    overlap_weight: float = 4.0
    # A replica whose KV usage (0..1) or waiting count is past these is not a candidate.
    busy_kv_usage: float = 0.95
    busy_waiting: int = 32
    # Decode-load blocks charged per request waiting in a replica's queue.
    waiting_weight_blocks: float = 32.0
    # Block-equivalents charged when the request's LoRA adapter is not loaded on the replica.
    lora_load_penalty: float = 1024.0
    # Block-equivalents per millisecond of client-to-replica latency (8.0 with overlap weight
    # 4: a 50 ms remote region costs as much as prefilling 100 blocks).
    region_penalty_per_ms: float = 8.0
    # 0 = lowest cost wins; > 0 = softmax sampling over costs (in blocks), needs an rng.
    temperature: float = 0.0
    # Policy used by `session` when a request has no session key.
    session_fallback: PolicyKind = PolicyKind.KV

    def __post_init__(self) -> None:
        for name in (
            "overlap_weight",
            "waiting_weight_blocks",
            "lora_load_penalty",
            "region_penalty_per_ms",
            "temperature",
        ):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise InvalidPolicyConfig(name, value, "must be a finite number >= 0")
        if not 0.0 < self.busy_kv_usage <= 1.0:
            raise InvalidPolicyConfig("busy_kv_usage", self.busy_kv_usage, "must be in (0, 1]")
        if self.busy_waiting < 0:
            raise InvalidPolicyConfig("busy_waiting", self.busy_waiting, "must be >= 0")
        if self.session_fallback is PolicyKind.SESSION:
            raise InvalidPolicyConfig("session_fallback", self.session_fallback, "not session")


@dataclass(slots=True, frozen=True)
class CostBreakdown:
    """Why a replica cost what it did (all in blocks); `total` is what was compared."""

    prefill_blocks: float
    decode_blocks: float
    queue_blocks: float
    lora_penalty: float
    region_cost: float
    total: float


@dataclass(slots=True, frozen=True)
class Decision:
    replica_id: ReplicaId
    policy: PolicyKind
    overlap_blocks: int
    # Set by the `kv` policy (and by `session` when it fell back to `kv`).
    cost: CostBreakdown | None = None


@dataclass(slots=True, frozen=True)
class ApplyResult:
    """What one `apply` / `apply_dump` did; `need_dump` asks the adapter to fetch a dump."""

    need_dump: bool = False
    # The replica's entries were dropped first (new epoch, seq backwards, dump applied).
    reset: bool = False
    # The batch was older than what the index holds and was ignored.
    stale: bool = False
    stored_blocks: int = 0
    removed_blocks: int = 0
    # Blocks of BlockStored events whose parent the index does not know (not indexed).
    skipped_blocks: int = 0


@dataclass(slots=True, frozen=True)
class IndexStats:
    replicas: int
    # (replica, block) entries; a block held by 3 replicas counts 3.
    blocks: int
    distinct_hashes: int
    skipped_blocks: int
    skipped_events: int
    unknown_removals: int
    stale_batches: int
    resets: int
    dumps_requested: int
    # Replicas holding a block whose parent they lost (matched block by block, slower).
    open_replicas: int
    memory_bytes: int
    # Entries evicted because a replica was past the per-replica cap.
    evicted_blocks: int = 0
