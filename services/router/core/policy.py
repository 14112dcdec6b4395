"""Routing policies: pick one replica for a request from views, overlap and config (pure, no I/O).

Policies: `kv` (default; Dynamo-style cost), `round_robin`, `least_loaded`, `random`, `session`
(rendezvous hashing on a session key). Time (`now`) and randomness (`rng`) come in as
arguments; round-robin keeps its place in an explicit `RoundRobinState`. Every policy first
drops ineligible replicas (unhealthy, skipped until later, or busy past the thresholds) and
returns None when none is left, so the router can queue the request.

The `kv` cost of a replica, in blocks (lowest wins):
    overlap_weight * prefill_blocks                 blocks the replica must still prefill
  + kv_blocks_active + num_blocks(request)          decode load once the request is added
  + num_waiting * waiting_weight_blocks             queue ahead of the request
  + lora_load_penalty (adapter not loaded)
  + region_penalty_per_ms * latency_ms(client, replica)   when both regions are known
Ties go to fewer active blocks, then the smaller replica id. So a remote replica beats a
same-region one with equal load when overlap_weight * (extra leading blocks it holds) exceeds
region_penalty_per_ms * (extra latency): with the defaults, 100 blocks (1,600 tokens at block
size 16) for a 50 ms remote region.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from random import Random

from basalt.ids import ReplicaId
from services.router.core.types import (
    Candidate,
    CostBreakdown,
    Decision,
    PolicyConfig,
    PolicyKind,
    RegionLatency,
    RouteRequest,
)

DEFAULT_LATENCY = RegionLatency()


@dataclass(slots=True)
class RoundRobinState:
    """Where round-robin is: the replica it picked last (the next pick is the next id)."""

    last: ReplicaId | None = None


def eligible(
    replicas: Iterable[Candidate], config: PolicyConfig, now: float
) -> list[Candidate]:
    """Replicas that are healthy, not skipped at `now`, and not busy past the thresholds."""
    return [
        r
        for r in replicas
        if r.healthy
        and r.skip_until <= now
        and r.kv_usage <= config.busy_kv_usage
        and r.num_waiting <= config.busy_waiting
    ]


def kv_cost(
    request: RouteRequest,
    replica: Candidate,
    overlap_blocks: int,
    config: PolicyConfig,
    latency: RegionLatency = DEFAULT_LATENCY,
) -> CostBreakdown:
    """The `kv` policy's cost of sending `request` to `replica` (see the module docstring)."""
    region = _region_cost(request, replica.region, config, latency)
    return CostBreakdown(*_kv_terms(request, replica, overlap_blocks, config, region))


_Terms = tuple[float, float, float, float, float, float]


def _region_cost(
    request: RouteRequest, region: str, config: PolicyConfig, latency: RegionLatency
) -> float:
    if request.region and region and config.region_penalty_per_ms:
        return config.region_penalty_per_ms * latency.ms(request.region, region)
    return 0.0


def _kv_terms(
    request: RouteRequest,
    replica: Candidate,
    overlap_blocks: int,
    config: PolicyConfig,
    region: float,
) -> _Terms:
    bs = replica.kv_block_size if replica.kv_block_size > 0 else 1
    prefill = max(0, request.num_prompt_tokens - overlap_blocks * bs) / bs
    decode = float(replica.kv_blocks_active + request.num_blocks)
    queue = replica.num_waiting * config.waiting_weight_blocks
    lora = 0.0
    if request.lora_name and request.lora_name not in replica.loras:
        lora = config.lora_load_penalty
    total = config.overlap_weight * prefill + decode + queue + lora + region
    return (prefill, decode, queue, lora, region, total)


def choose_kv(
    request: RouteRequest,
    candidates: Sequence[Candidate],
    overlap: Mapping[ReplicaId, int],
    config: PolicyConfig,
    latency: RegionLatency = DEFAULT_LATENCY,
    rng: Random | None = None,
) -> Decision | None:
    """Lowest `kv_cost` among `candidates` (already eligible); softmax if temperature > 0."""
    if not candidates:
        return None
    get = overlap.get
    regions = {g: _region_cost(request, g, config, latency) for g in {r.region for r in candidates}}
    if config.temperature > 0 and rng is not None and len(candidates) > 1:
        scored = [
            (_kv_terms(request, r, get(r.replica_id, 0), config, regions[r.region]), r)
            for r in candidates
        ]
        terms, best = _sample_softmax(scored, config.temperature, rng)
        return Decision(best.replica_id, PolicyKind.KV, get(best.replica_id, 0),
                        CostBreakdown(*terms))
    best = _lowest_kv(request, candidates, get, config, regions)
    overlap_blocks = get(best.replica_id, 0)
    terms = _kv_terms(request, best, overlap_blocks, config, regions[best.region])
    return Decision(best.replica_id, PolicyKind.KV, overlap_blocks, CostBreakdown(*terms))


def _lowest_kv(
    request: RouteRequest,
    candidates: Sequence[Candidate],
    get: Callable[[ReplicaId, int], int],
    config: PolicyConfig,
    regions: Mapping[str, float],
) -> Candidate:
    """The candidate of lowest `_kv_terms` total (ties: fewer active blocks, then the smaller
    id), in one pass with the arithmetic inline: this runs once per decision over every
    replica, so no tuple per candidate is built (the winner's terms are computed after)."""
    tokens, blocks, lora_name = request.num_prompt_tokens, request.num_blocks, request.lora_name
    w_overlap, w_wait, lora_penalty = (config.overlap_weight, config.waiting_weight_blocks,
                                       config.lora_load_penalty)
    best: Candidate | None = None
    best_key: tuple[float, int, str] = (math.inf, 0, "")
    for r in candidates:
        bs = r.kv_block_size if r.kv_block_size > 0 else 1
        prefill = tokens - get(r.replica_id, 0) * bs
        lora = lora_penalty if lora_name and lora_name not in r.loras else 0.0
        # Summed in `_kv_terms`' order, so totals (and ties) are bit for bit the same.
        total = (w_overlap * (prefill / bs if prefill > 0 else 0.0)
                 + float(r.kv_blocks_active + blocks) + r.num_waiting * w_wait + lora
                 + regions[r.region])
        if total < best_key[0] or (total == best_key[0] and best is not None
                                   and (r.kv_blocks_active, r.replica_id) < best_key[1:]):
            best, best_key = r, (total, r.kv_blocks_active, r.replica_id)
    assert best is not None
    return best


def _sample_softmax(
    scored: list[tuple[_Terms, Candidate]], temperature: float, rng: Random
) -> tuple[_Terms, Candidate]:
    ordered = sorted(scored, key=lambda s: s[1].replica_id)  # input order must not matter
    lowest = min(t[5] for t, _ in ordered)
    weights = [math.exp(-(t[5] - lowest) / temperature) for t, _ in ordered]
    return rng.choices(ordered, weights=weights, k=1)[0]


def choose_round_robin(
    candidates: Sequence[Candidate], state: RoundRobinState
) -> Candidate | None:
    """The first candidate (by id) after the last pick, wrapping; updates `state`."""
    if not candidates:
        return None
    ids = sorted(r.replica_id for r in candidates)
    pick = ids[0]
    if state.last is not None:
        pick = next((i for i in ids if i > state.last), ids[0])
    state.last = pick
    return next(r for r in candidates if r.replica_id == pick)


def choose_least_loaded(candidates: Sequence[Candidate]) -> Candidate | None:
    """Fewest running + waiting requests, then lowest KV usage, then smallest id."""
    if not candidates:
        return None
    return min(
        candidates,
        key=lambda r: (r.num_running + r.num_waiting, r.kv_usage, r.replica_id),
    )


def choose_random(candidates: Sequence[Candidate], rng: Random) -> Candidate | None:
    """Uniform pick; the same rng state picks the same replica whatever the input order."""
    if not candidates:
        return None
    return rng.choice(sorted(candidates, key=lambda r: r.replica_id))


def rendezvous_weight(session_key: str, replica_id: ReplicaId) -> int:
    """Highest-random-weight score of a (session, replica) pair; stable across processes."""
    data = session_key.encode("utf-8") + b"\x00" + replica_id.encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")


def choose_session(candidates: Sequence[Candidate], session_key: str) -> Candidate | None:
    """Rendezvous hashing: a key stays on its replica while that replica stays eligible, and
    only keys of a replica that leaves move when others come and go."""
    if not candidates:
        return None
    return max(
        candidates, key=lambda r: (rendezvous_weight(session_key, r.replica_id), r.replica_id)
    )


def choose(
    request: RouteRequest,
    replicas: Iterable[Candidate],
    overlap: Mapping[ReplicaId, int],
    config: PolicyConfig,
    *,
    now: float,
    latency: RegionLatency = DEFAULT_LATENCY,
    rng: Random | None = None,
    rr_state: RoundRobinState | None = None,
) -> Decision | None:
    """Pick a replica with `config.kind`; None when no replica is eligible.

    `rng` is required by `random` (and used by `kv` when temperature > 0); `rr_state` by
    `round_robin`. `overlap` is `PrefixIndex.match`'s answer (missing replicas hold 0).
    """
    candidates = eligible(replicas, config, now)
    kind = config.kind
    if kind is PolicyKind.SESSION:
        if request.session_key is None:
            kind = config.session_fallback
        else:
            picked = choose_session(candidates, request.session_key)
            return _decision(picked, PolicyKind.SESSION, overlap)
    if kind is PolicyKind.KV:
        return choose_kv(request, candidates, overlap, config, latency, rng)
    if kind is PolicyKind.ROUND_ROBIN:
        if rr_state is None:
            raise ValueError("round_robin needs rr_state (a RoundRobinState)")
        return _decision(choose_round_robin(candidates, rr_state), kind, overlap)
    if kind is PolicyKind.LEAST_LOADED:
        return _decision(choose_least_loaded(candidates), kind, overlap)
    if kind is PolicyKind.RANDOM:
        if rng is None:
            raise ValueError("random needs rng (a random.Random)")
        return _decision(choose_random(candidates, rng), kind, overlap)
    raise AssertionError(f"unhandled policy {kind}")


def _decision(
    picked: Candidate | None, kind: PolicyKind, overlap: Mapping[ReplicaId, int]
) -> Decision | None:
    if picked is None:
        return None
    return Decision(picked.replica_id, kind, overlap.get(picked.replica_id, 0))


def after_decision(view: Candidate, request: RouteRequest) -> Candidate:
    """The view with the routed request counted in, until the next load report replaces it:
    its blocks become active and it waits in the queue (as Dynamo does between reports)."""
    return replace(
        view,
        kv_blocks_active=view.kv_blocks_active + request.num_blocks,
        num_waiting=view.num_waiting + 1,
    )
