"""The routing replay: real index and policies over simulated replicas, in virtual time."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest

from bench import routing
from bench.replay import PolicyResult, ReplayConfig, prepare, replay, trace_bounds
from bench.routing_live import run_comparison, stickiness
from bench.traces import ChatWorkload, synthetic_chat
from services.router.core.types import PolicyConfig, PolicyKind

# ~200 requests of multi-turn chat on 4 replicas, each cache a third of the distinct tokens.
WORKLOAD = ChatWorkload(conversations=40, rate=1.0, seed=7)
CONFIG = ReplayConfig(replicas=4, num_blocks=2048, max_model_len=32_768)


@pytest.fixture(scope="module")
def prepared():
    return prepare(synthetic_chat(WORKLOAD), CONFIG)


@pytest.fixture(scope="module")
def results(prepared) -> dict[str, PolicyResult]:
    kinds = (PolicyKind.KV, PolicyKind.ROUND_ROBIN, PolicyKind.LEAST_LOADED, PolicyKind.RANDOM)
    return {k.value: replay(prepared, CONFIG, k) for k in kinds}


def _figures(r: PolicyResult) -> dict:
    d = asdict(r)
    d.pop("wall_s")
    return d


def test_the_workload_is_the_size_the_tests_assume(prepared):
    assert 150 <= len(prepared.trace.requests) <= 300


def test_kv_routing_hits_the_prefix_cache_more_than_round_robin(results):
    assert results["kv"].hit_ratio > results["round_robin"].hit_ratio + 0.05
    assert results["kv"].ttft_ms["p50"] < results["round_robin"].ttft_ms["p50"]


def test_no_policy_beats_the_oracle(prepared, results):
    bounds = trace_bounds(prepared, CONFIG)
    assert 0 < bounds.pooled_lru_hit_ratio <= bounds.oracle_hit_ratio < 1
    for r in results.values():
        assert 0 < r.hit_ratio <= bounds.oracle_hit_ratio


def test_every_request_finishes_here_and_each_policy_reports_its_figures(prepared, results):
    n = len(prepared.trace.requests)
    for r in results.values():
        assert (r.finished, r.rejected, r.too_long) == (n, 0, 0)
        assert sum(r.assigned.values()) == n
        assert r.output_tokens == prepared.trace.output_tokens
        assert 0 < r.ttft_ms["p50"] <= r.ttft_ms["p90"] <= r.ttft_ms["p99"]
        assert 0 < r.itl_ms["p50"] <= r.itl_ms["p99"] and r.itl_ms["mean"] > 0
        assert r.output_tok_s > 0 and r.imbalance >= 1.0
    assert results["round_robin"].assigned == {f"replica-{i}": n // 4 + (i < n % 4) for i in range(4)}


def test_the_index_sees_what_the_replicas_cache(results):
    # KV events reach the index 5 ms late: its overlap on the chosen replica is what it hits.
    for r in results.values():
        assert r.predicted_tokens == pytest.approx(r.cached_tokens, rel=0.05)
        assert r.index_skipped_blocks == 0


def test_a_replay_is_a_pure_function_of_trace_config_and_seed(prepared, results):
    again = replay(prepared, CONFIG, PolicyKind.RANDOM)
    assert _figures(again) == _figures(results["random"])
    reseeded = replay(prepared, replace(CONFIG, seed=1), PolicyKind.RANDOM)
    assert reseeded.assigned != results["random"].assigned


def test_requests_are_queued_rejected_or_too_long_and_none_is_lost():
    # One replica that counts as busy with a single waiting request, a 2-slot router queue,
    # a burst of arrivals, and a context too short for the longer prompts.
    trace = synthetic_chat(ChatWorkload(conversations=30, rate=50.0, think_s=0.5, seed=2))
    config = ReplayConfig(
        replicas=1, num_blocks=512, max_model_len=4096, queue_limit=2, queue_timeout_s=0.5,
        policy=PolicyConfig(busy_waiting=0),
    )
    r = replay(prepare(trace, config), config, PolicyKind.LEAST_LOADED)
    assert r.queued > 0 and r.rejected > 0 and r.too_long > 0 and r.finished > 0
    assert r.finished + r.rejected + r.too_long == len(trace.requests)
    assert r.prompt_tokens < trace.prompt_tokens


def test_the_cli_prints_writes_json_and_updates_only_its_markdown_section(tmp_path, capsys):
    doc = tmp_path / "benchmarks.md"
    label = "### synthetic chat (12 conversations, seed 0)"
    doc.write_text(
        "# Benchmarks\n\n## Index\n\nindex table\n\n## Routing\n\nintro\n\n"
        f"{label}\n\nold table\n\n### other trace\n\nother table\n\n## Runtime\n\nruntime table\n"
    )
    out = tmp_path / "routing.json"
    argv = ["--conversations", "12", "--replicas", "2", "--num-blocks", "1024",
            "--policies", "kv,round_robin", "--json", str(out), "--markdown", str(doc)]
    assert routing.main(argv) == 0
    printed = capsys.readouterr().out
    assert "| kv |" in printed and "oracle" in printed and "kv vs round_robin" in printed
    report = json.loads(out.read_text())
    assert [p["policy"] for p in report["policies"]] == ["kv", "round_robin"]
    assert report["command"] == "basalt bench routing " + " ".join(argv)
    text = doc.read_text()
    assert "old table" not in text and text.count(label) == 1 and "| kv |" in text
    order = ["## Index", "index table", "## Routing", "intro", label, "| kv |", "### other trace",
             "other table", "## Runtime", "runtime table"]
    assert [text.index(s) for s in order] == sorted(text.index(s) for s in order)


def test_the_cli_adds_a_routing_section_to_a_new_file(tmp_path, capsys):
    doc = tmp_path / "docs" / "benchmarks.md"
    doc.parent.mkdir()
    argv = ["--conversations", "8", "--replicas", "2", "--num-blocks", "1024",
            "--policies", "kv", "--markdown", str(doc)]
    assert routing.main(argv) == 0
    text = doc.read_text()
    assert text.startswith("# Benchmarks\n\n## Routing\n") and "| kv |" in text


def test_stickiness_counts_follow_ups_that_stay_on_the_previous_turns_replica():
    sessions = ["a", "b", "a", "a", None, "b"]
    replicas = ["r0", "r1", "r0", "r1", "r0", "r1"]
    assert stickiness(sessions, replicas) == pytest.approx(2 / 3)  # a: stay, move; b: stay


@pytest.mark.integration
def test_the_live_stack_shows_the_replays_picture():
    # nats-server, 2 sim runtimes and the router as processes; ~40 requests at half speed.
    trace = synthetic_chat(replace(routing.LIVE_WORKLOAD, conversations=8))
    config = ReplayConfig(replicas=2, num_blocks=1024, max_model_len=16_384, vocab_size=259)
    [row] = run_comparison(trace, config, [PolicyKind.KV], scale=0.5)
    assert row["live_errors"] == 0
    assert sum(row["assigned"]["live"]) == len(trace.requests)
    hit = row["hit_ratio"]
    assert hit["live"] > 0.5 and hit["live"] == pytest.approx(hit["replay"], abs=0.1)
    assert row["stickiness"]["live"] > 0.8


def test_policies_run_in_parallel_processes_give_the_same_figures(prepared):
    kinds = [PolicyKind.KV, PolicyKind.ROUND_ROBIN]
    serial = routing.run_policies(prepared, CONFIG, kinds, jobs=1)
    parallel = routing.run_policies(prepared, CONFIG, kinds, jobs=2)
    assert [_figures(r) for r in parallel] == [_figures(r) for r in serial]
