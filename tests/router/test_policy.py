"""Routing policies: which replica a request goes to, and why."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from basalt.ids import ReplicaId
from services.router.core.policy import (
    RoundRobinState,
    after_decision,
    choose,
    eligible,
    kv_cost,
    rendezvous_weight,
)
from services.router.core.types import (
    Candidate,
    InvalidPolicyConfig,
    PolicyConfig,
    PolicyKind,
    RegionLatency,
    RouteRequest,
)

# Weights spelled out (the mechanics under test), not the tuned defaults.
KV = PolicyConfig(overlap_weight=1.0, lora_load_penalty=256.0, region_penalty_per_ms=2.0)
# A 2,048-token prompt: 128 blocks of 16.
REQ = RouteRequest(num_prompt_tokens=2048, num_blocks=128)


def view(name: str, **kw: object) -> Candidate:
    kw.setdefault("kv_blocks_total", 10_000)
    return Candidate(replica_id=ReplicaId(name), **kw)  # type: ignore[arg-type]


def pick(
    replicas: list[Candidate],
    overlap: dict[str, int] | None = None,
    config: PolicyConfig = KV,
    request: RouteRequest = REQ,
    **kw: object,
) -> str | None:
    ov = {ReplicaId(k): v for k, v in (overlap or {}).items()}
    decision = choose(request, replicas, ov, config, now=kw.pop("now", 100.0), **kw)  # type: ignore[arg-type]
    return None if decision is None else decision.replica_id


# -- kv ----------------------------------------------------------------------------------


def test_kv_prefers_the_replica_holding_the_prefix() -> None:
    replicas = [view("a"), view("b"), view("c")]
    assert pick(replicas, {"b": 100, "c": 20}) == "b"


def test_kv_decision_explains_its_cost() -> None:
    request = RouteRequest(num_prompt_tokens=2048, num_blocks=128, lora_name="sql", region="eu")
    replicas = [view("a", kv_blocks_active=500, num_waiting=2, region="us")]
    decision = choose(request, replicas, {ReplicaId("a"): 28}, KV, now=0.0)
    assert decision is not None and decision.overlap_blocks == 28
    cost = decision.cost
    assert cost is not None
    assert (cost.prefill_blocks, cost.decode_blocks, cost.queue_blocks) == (100, 628, 64)
    assert (cost.lora_penalty, cost.region_cost) == (256, 100)
    assert cost.total == 100 + 628 + 64 + 256 + 100


def test_a_busy_replica_is_not_chosen_even_with_the_prefix() -> None:
    full = view("a", kv_blocks_active=9_700)  # 97% > 95%
    queued = view("b", num_waiting=33)  # > 32 waiting
    assert pick([full, queued, view("c")], {"a": 128, "b": 128}) == "c"
    assert pick([full, queued], {"a": 128}) is None
    at_limit = view("d", kv_blocks_active=9_500, num_waiting=32)  # at, not past, the limits
    assert pick([at_limit]) == "d"


def test_unhealthy_and_skipped_replicas_are_not_candidates_until_their_time() -> None:
    sick = view("a", healthy=False)
    skipped = view("b", skip_until=150.0)
    assert pick([sick, skipped], {"a": 128, "b": 128}, now=100.0) is None
    assert pick([sick, skipped], {"a": 128, "b": 128}, now=150.0) == "b"
    assert eligible([sick, skipped, view("c")], KV, now=100.0) == [view("c")]


def test_load_spreads_when_no_replica_holds_the_prefix() -> None:
    views = {n: view(n) for n in ("a", "b", "c", "d")}
    counts: Counter[str] = Counter()
    for _ in range(12):
        decision = choose(REQ, list(views.values()), {}, KV, now=0.0)
        assert decision is not None
        counts[decision.replica_id] += 1
        views[decision.replica_id] = after_decision(views[decision.replica_id], REQ)
    assert counts == {"a": 3, "b": 3, "c": 3, "d": 3}


def test_a_loaded_replica_loses_its_prefix_advantage() -> None:
    # b holds 100 blocks (saves 100 blocks of prefill) but has 300 more active blocks.
    replicas = [view("a"), view("b", kv_blocks_active=300)]
    assert pick(replicas, {"b": 100}) == "a"
    assert pick(replicas, {"b": 100}, PolicyConfig(overlap_weight=4.0)) == "b"


def test_the_replica_with_the_lora_loaded_wins_over_an_equal_one() -> None:
    request = RouteRequest(num_prompt_tokens=2048, num_blocks=128, lora_name="sql")
    replicas = [view("a"), view("b", loras=frozenset({"sql"}))]
    assert pick(replicas, request=request) == "b"
    assert pick(replicas, request=REQ) == "a"  # base model: tie on cost, broken by id


def test_same_region_wins_at_equal_overlap_but_a_big_overlap_beats_distance() -> None:
    # Rule: remote wins when overlap_weight * extra_blocks > region_penalty_per_ms * extra_ms;
    # defaults: 1.0 * extra_blocks > 2.0 * 50 ms, i.e. more than 100 extra leading blocks.
    request = RouteRequest(num_prompt_tokens=4096, num_blocks=256, region="us-east")
    local, remote = view("local", region="us-east"), view("remote", region="eu-west")
    assert pick([local, remote], {"local": 50, "remote": 50}, request=request) == "local"
    assert pick([local, remote], {"remote": 99}, request=request) == "local"
    assert pick([local, remote], {"remote": 101}, request=request) == "remote"


def test_a_latency_table_overrides_the_default_distance() -> None:
    request = RouteRequest(num_prompt_tokens=4096, num_blocks=256, region="us-east")
    near, far = view("near", region="us-west"), view("far", region="eu-west")
    table = RegionLatency(table={("us-west", "us-east"): 10.0, ("us-east", "eu-west"): 80.0})
    assert table.ms("us-east", "us-west") == 10.0
    assert pick([near, far], {"far": 100}, request=request, latency=table) == "near"
    assert pick([near, far], {"far": 141}, request=request, latency=table) == "far"


def test_ties_are_broken_by_fewer_active_blocks_then_id_whatever_the_order() -> None:
    replicas = [view("c"), view("b"), view("a")]
    assert pick(replicas) == "a"
    assert pick(list(reversed(replicas))) == "a"
    # Equal total cost: b has more overlap but more active blocks; a has fewer active.
    tied = [view("b", kv_blocks_active=10), view("a")]
    assert kv_cost(REQ, tied[0], 10, KV).total == kv_cost(REQ, tied[1], 0, KV).total
    assert pick(tied, {"b": 10}) == "a"


def test_temperature_samples_by_cost_with_the_given_rng() -> None:
    config = PolicyConfig(temperature=50.0)
    replicas = [view("a"), view("b", kv_blocks_active=50), view("c", kv_blocks_active=5000)]
    picks = [pick(replicas, config=config, rng=random.Random(i)) for i in range(300)]
    counts = Counter(picks)
    assert counts["a"] > counts["b"] > 0 and counts["c"] == 0
    again = [pick(replicas, config=config, rng=random.Random(i)) for i in range(300)]
    assert again == picks


# -- other policies ---------------------------------------------------------------------


def test_round_robin_cycles_and_keeps_its_place_when_replicas_change() -> None:
    config = PolicyConfig(kind=PolicyKind.ROUND_ROBIN)
    state = RoundRobinState()
    replicas = [view("c"), view("a"), view("b")]
    picks = [pick(replicas, {"c": 128}, config, rr_state=state) for _ in range(4)]
    assert picks == ["a", "b", "c", "a"]
    grown = [*replicas, view("bb")]
    assert [pick(grown, config=config, rr_state=state) for _ in range(3)] == ["b", "bb", "c"]
    busy_b = [view("a"), view("b", healthy=False), view("c")]
    assert pick(busy_b, config=config, rr_state=state) == "a"
    assert pick(busy_b, config=config, rr_state=state) == "c"


def test_least_loaded_picks_the_fewest_requests_then_lowest_kv_usage() -> None:
    config = PolicyConfig(kind=PolicyKind.LEAST_LOADED)
    replicas = [
        view("a", num_running=3),
        view("b", num_running=1, num_waiting=1),
        view("c", num_running=2),
    ]
    assert pick(replicas, {"a": 128}, config) == "b"
    replicas.append(view("d", num_running=2, kv_blocks_active=10))
    replicas.append(view("e", num_running=1, num_waiting=1, kv_blocks_active=5))
    assert pick(replicas, config=config) == "b"


def test_random_is_reproducible_from_its_seed_and_reaches_every_replica() -> None:
    config = PolicyConfig(kind=PolicyKind.RANDOM)
    replicas = [view(n) for n in "abcd"]
    rng1, rng2, rng3 = random.Random(7), random.Random(7), random.Random(8)
    seq1 = [pick(replicas, config=config, rng=rng1) for _ in range(50)]
    seq2 = [pick(list(reversed(replicas)), config=config, rng=rng2) for _ in range(50)]
    seq3 = [pick(replicas, config=config, rng=rng3) for _ in range(50)]
    assert seq1 == seq2 != seq3
    assert set(seq1) == set("abcd")


def test_session_affinity_sticks_and_survives_a_replica_joining() -> None:
    config = PolicyConfig(kind=PolicyKind.SESSION)
    replicas = [view(n) for n in ("a", "b", "c", "d")]
    keys = [f"user-{i}" for i in range(400)]

    def route(key: str, pool: list[Candidate]) -> str | None:
        request = RouteRequest(2048, 128, session_key=key)
        return pick(pool, {"a": 128}, config, request=request)

    before = {k: route(k, replicas) for k in keys}
    assert all(route(k, list(reversed(replicas))) == before[k] for k in keys[:50])
    assert len(set(before.values())) == 4
    after = {k: route(k, [*replicas, view("e")]) for k in keys}
    moved = [k for k in keys if after[k] != before[k]]
    assert all(after[k] == "e" for k in moved)  # only moves onto the newcomer
    assert 40 < len(moved) < 130  # about a fifth of the keys


def test_session_moves_off_a_busy_replica_and_comes_back() -> None:
    config = PolicyConfig(kind=PolicyKind.SESSION)
    request = RouteRequest(2048, 128, session_key="user-1")
    replicas = [view(n) for n in ("a", "b", "c")]
    home = pick(replicas, config=config, request=request)
    assert home is not None
    busy = [view(r.replica_id, num_waiting=99) if r.replica_id == home else r for r in replicas]
    assert pick(busy, config=config, request=request) not in (home, None)
    assert pick(replicas, config=config, request=request) == home
    assert rendezvous_weight("user-1", ReplicaId(home)) == max(
        rendezvous_weight("user-1", r.replica_id) for r in replicas
    )


def test_session_without_a_key_falls_back_to_kv() -> None:
    config = PolicyConfig(kind=PolicyKind.SESSION)
    decision = choose(REQ, [view("a"), view("b")], {ReplicaId("b"): 100}, config, now=0.0)
    assert decision is not None and decision.replica_id == "b"
    assert decision.policy is PolicyKind.KV and decision.cost is not None


def test_policies_that_need_state_or_rng_say_so() -> None:
    with pytest.raises(ValueError, match="rr_state"):
        pick([view("a")], config=PolicyConfig(kind=PolicyKind.ROUND_ROBIN))
    with pytest.raises(ValueError, match="rng"):
        pick([view("a")], config=PolicyConfig(kind=PolicyKind.RANDOM))


def test_every_policy_returns_none_when_nothing_is_eligible() -> None:
    down = [view("a", healthy=False)]
    for kind in PolicyKind:
        request = RouteRequest(2048, 128, session_key="k")
        got = pick(
            down,
            config=PolicyConfig(kind=kind),
            request=request,
            rng=random.Random(0),
            rr_state=RoundRobinState(),
        )
        assert got is None, kind


# -- helpers and config ----------------------------------------------------------------


def test_after_decision_counts_the_request_until_the_next_report() -> None:
    before = view("a", kv_blocks_active=100, num_waiting=1)
    after = after_decision(before, REQ)
    assert (after.kv_blocks_active, after.num_waiting) == (228, 2)
    assert before.kv_blocks_active == 100  # the input view is not changed


def test_a_bad_config_value_is_named_in_the_error() -> None:
    with pytest.raises(InvalidPolicyConfig) as err:
        PolicyConfig(busy_kv_usage=1.5)
    assert (err.value.field_name, err.value.value) == ("busy_kv_usage", 1.5)
    with pytest.raises(InvalidPolicyConfig):
        PolicyConfig(overlap_weight=-1.0)
    with pytest.raises(InvalidPolicyConfig):
        PolicyConfig(session_fallback=PolicyKind.SESSION)
