"""`basalt bench routing`: replays a trace through every routing policy over simulated replicas
and prints a table (does I/O: reads the trace, prints, writes JSON and the markdown section).

The replay itself (`bench/replay.py`) is pure and runs in virtual time; wall time here is only
what the replay cost on this machine. `--jobs N` runs policies in N processes (fork).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, replace
from multiprocessing import get_context
from pathlib import Path

from services.router.core.types import PolicyConfig, PolicyKind

from .replay import (
    H100_LLAMA_8B_BLOCKS,
    PolicyResult,
    PreparedTrace,
    ReplayConfig,
    TraceBounds,
    prepare,
    replay,
    trace_bounds,
)
from .report import machine, update_section
from .traces import ChatWorkload, Trace, limit_and_scale, load_mooncake, synthetic_chat

DEFAULT_POLICIES = "kv,round_robin,least_loaded,random"
# The default synthetic chat holds ~1M distinct tokens of open conversations at steady state
# (2.9M distinct prompt tokens in all); 4,096 blocks (64k tokens) per replica make a 0.5M-token
# fleet cache, so evictions matter and where a conversation lands matters.
SYNTHETIC_BLOCKS = 4096
# --live: a small chat a byte-tokenizer sim runtime accepts (vocab 259: ids 3..258).
LIVE_WORKLOAD = ChatWorkload(
    conversations=40, rate=1.0, think_s=5.0, system_tokens=600, first_message_tokens=400,
    message_tokens=100, answer_tokens=64, prompt_token_lo=3, vocab_size=259,
)
SECTION = "## Routing"
INTRO = """Discrete-event replay in virtual time (`bench/replay.py`): the router's real
`PrefixIndex`, `Fleet` view and `policy.choose`, fed by each simulated replica's KV events
and load reports (delayed as each run's *Fleet* line says), in front of `SimReplicaCore` replicas
(Llama-3.1-8B on H100 timing profile, finite KV cache with LRU eviction). Every policy sees
the same trace. *prefix hit* = cached prompt tokens / prompt tokens; *oracle* = one replica
with unlimited cache (no policy can beat it); *pooled LRU* = one LRU cache the size of the
whole fleet's (a reference, not a bound). TTFT counts the router queue; ITL is the gap
between consecutive tokens of a request; *busy max/mean* is the load imbalance. Wall time is
the replay's cost on a shared, noisy CPU, not a serving figure."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="basalt bench routing", description=__doc__)
    p.add_argument("--trace", default="synthetic",
                   help="'synthetic' (multi-turn chat) or a Mooncake JSON-lines file")
    p.add_argument("--replicas", type=int, default=8)
    p.add_argument("--policies", default=None,
                   help=f"comma-separated, from {[k.value for k in PolicyKind]} "
                   f"(default {DEFAULT_POLICIES}; kv with --live)")
    p.add_argument("--limit", type=int, default=None, help="replay the first N requests only")
    p.add_argument("--rate-scale", type=float, default=1.0,
                   help="divide arrival times by this (2 = twice the request rate)")
    p.add_argument("--seed", type=int, default=0, help="synthetic trace and `random` policy")
    p.add_argument("--conversations", type=int, default=None,
                   help=f"synthetic: conversations (default {ChatWorkload().conversations})")
    p.add_argument("--num-blocks", type=int, default=None,
                   help=f"KV blocks per replica (default {SYNTHETIC_BLOCKS} synthetic, "
                   f"{H100_LLAMA_8B_BLOCKS} for a trace file: an H100 80GB)")
    p.add_argument("--block-size", type=int, default=16)
    p.add_argument("--max-num-seqs", type=int, default=256, help="per replica (vLLM's default)")
    p.add_argument("--max-model-len", type=int, default=None,
                   help="default: 131072, or what one replica's blocks hold if less")
    p.add_argument("--overlap-weight", type=float, default=PolicyConfig().overlap_weight,
                   help="kv policy: cost of one block to prefill vs one block of load")
    p.add_argument("--event-delay-ms", type=float, default=5.0)
    p.add_argument("--load-report-ms", type=float, default=1000.0)
    p.add_argument("--queue-limit", type=int, default=64)
    p.add_argument("--queue-timeout-s", type=float, default=30.0)
    p.add_argument("--jobs", type=int, default=1, help="policies replayed in parallel")
    p.add_argument("--live", action="store_true",
                   help="also run the trace through real processes (nats-server, sim runtimes, "
                   "router) and compare with the replay; synthetic trace only")
    p.add_argument("--live-time-scale", type=float, default=0.5,
                   help="--live: wall seconds per simulated second")
    p.add_argument("--json", type=Path, default=None, help="write the figures here")
    p.add_argument("--markdown", type=Path, default=None,
                   help=f"update the '{SECTION}' section of this file (e.g. docs/benchmarks.md)")
    return p


def _policies(text: str) -> list[PolicyKind]:
    try:
        kinds = [PolicyKind(name.strip()) for name in text.split(",") if name.strip()]
    except ValueError as e:
        raise SystemExit(f"--policies: {e}; known: {[k.value for k in PolicyKind]}") from None
    if not kinds:
        raise SystemExit("--policies: name at least one policy")
    return kinds


def _config(ns: argparse.Namespace, synthetic: bool) -> ReplayConfig:
    blocks = ns.num_blocks or (SYNTHETIC_BLOCKS if synthetic else H100_LLAMA_8B_BLOCKS)
    max_len = ns.max_model_len or min(131_072, blocks * ns.block_size)
    return ReplayConfig(
        replicas=ns.replicas, num_blocks=blocks, block_size=ns.block_size,
        max_model_len=max_len, max_num_seqs=ns.max_num_seqs, event_delay_s=ns.event_delay_ms / 1000,
        load_report_s=ns.load_report_ms / 1000, queue_limit=ns.queue_limit,
        queue_timeout_s=ns.queue_timeout_s, seed=ns.seed,
        policy=PolicyConfig(overlap_weight=ns.overlap_weight),
    )


def _trace(ns: argparse.Namespace) -> Trace:
    if ns.trace == "synthetic":
        w = LIVE_WORKLOAD if ns.live else ChatWorkload()
        w = replace(w, seed=ns.seed)
        if ns.conversations:
            w = replace(w, conversations=ns.conversations)
        trace = synthetic_chat(w)
    else:
        trace = load_mooncake(Path(ns.trace))
    name = trace.name
    if ns.limit:
        name += f", first {ns.limit:,}"
    if ns.rate_scale != 1.0:
        name += f", rate ×{ns.rate_scale:g}"
    return replace(limit_and_scale(trace, ns.limit, ns.rate_scale), name=name)


# -- running ---------------------------------------------------------------------------------

_SHARED: tuple[PreparedTrace, ReplayConfig] | None = None


def _replay_shared(kind: PolicyKind) -> PolicyResult:
    assert _SHARED is not None
    return replay(_SHARED[0], _SHARED[1], kind)


def run_policies(
    prepared: PreparedTrace, config: ReplayConfig, kinds: list[PolicyKind], jobs: int
) -> list[PolicyResult]:
    """Replay each policy, in `jobs` forked processes when > 1 (same figures either way)."""
    if jobs <= 1 or len(kinds) == 1:
        return [replay(prepared, config, k) for k in kinds]
    global _SHARED
    _SHARED = (prepared, config)  # forked workers read it; nothing big is pickled
    try:
        with ProcessPoolExecutor(min(jobs, len(kinds)), mp_context=get_context("fork")) as pool:
            return list(pool.map(_replay_shared, kinds))
    finally:
        _SHARED = None


def run(
    trace: Trace,
    config: ReplayConfig,
    kinds: list[PolicyKind],
    *,
    command: str = "",
    jobs: int = 1,
    json_out: Path | None = None,
    markdown: Path | None = None,
) -> dict:
    """Replay `trace` with each policy, print the table, return (and write) the figures."""
    started = time.perf_counter()
    prepared = prepare(trace, config)
    bounds = trace_bounds(prepared, config)
    results = run_policies(prepared, config, kinds, jobs)
    report = _report(trace, config, bounds, results, command, time.perf_counter() - started)
    text = format_report(report)
    print(text)
    if json_out is not None:
        json_out.write_text(json.dumps(report, indent=2) + "\n")
    if markdown is not None:
        update_section(markdown, f"### {report['trace']['name']}", text, parent=SECTION,
                       parent_intro=INTRO)
    return report


def _report(
    trace: Trace, config: ReplayConfig, bounds: TraceBounds, results: list[PolicyResult],
    command: str, wall_s: float,
) -> dict:
    cfg = asdict(config)
    cfg["policy"] = {k: (v.value if isinstance(v, PolicyKind) else v)
                     for k, v in cfg["policy"].items()}
    policies = []
    for r in results:
        row = asdict(r)
        del row["routes"]  # per request: too long for the report
        row.update(hit_ratio=r.hit_ratio, output_tok_s=r.output_tok_s, imbalance=r.imbalance)
        policies.append(row)
    report = {
        "command": command,
        "machine": machine(),
        "trace": {
            "name": trace.name, "requests": len(trace.requests),
            "prompt_tokens": trace.prompt_tokens, "output_tokens": trace.output_tokens,
            "duration_s": trace.duration_s,
            "distinct_prompt_tokens": bounds.distinct_prompt_blocks * config.block_size,
        },
        "config": cfg,
        "oracle_hit_ratio": bounds.oracle_hit_ratio,
        "pooled_lru_hit_ratio": bounds.pooled_lru_hit_ratio,
        "policies": policies,
        "wall_s": wall_s,
    }
    by = {r.policy: r for r in results}
    if "kv" in by and "round_robin" in by:
        kv, rr = by["kv"], by["round_robin"]
        report["kv_vs_round_robin"] = {
            "hit_ratio": _ratio(kv.hit_ratio, rr.hit_ratio),
            **{f"ttft_{q}": _ratio(kv.ttft_ms[q], rr.ttft_ms[q]) for q in ("p50", "p90", "p99")},
        }
    return report


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


# -- output ----------------------------------------------------------------------------------


def _num(x: float) -> str:
    return f"{x:,.0f}" if abs(x) >= 100 else f"{x:.1f}"


HEADER = (
    "| policy | prefix hit | TTFT p50 / p90 / p99 (ms) | ITL mean / p99 (ms) | output tok/s "
    "| busy max/mean | queued / rejected / too long | wall (s) |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _summary(report: dict) -> list[str]:
    t, c = report["trace"], report["config"]
    per_replica = c["num_blocks"] * c["block_size"]
    share = per_replica * c["replicas"] / max(1, t["distinct_prompt_tokens"])
    trace = (
        f"**{t['name']}**: {t['requests']:,} requests over {t['duration_s']:,.0f} s, "
        f"{t['prompt_tokens']:,} prompt tokens ({t['distinct_prompt_tokens']:,} distinct), "
        f"{t['output_tokens']:,} output tokens."
    )
    fleet = (
        f"Fleet: {c['replicas']} replicas × {c['num_blocks']:,} KV blocks of {c['block_size']} "
        f"tokens ({per_replica:,} tokens each; together {share:.0%} of the distinct prompt "
        f"tokens), max_model_len {c['max_model_len']:,}; KV events and load reports "
        f"{c['event_delay_s'] * 1000:g} ms late, a load report every {c['load_report_s']:g} s; "
        f"router queue {c['queue_limit']} deep, {c['queue_timeout_s']:g} s timeout; kv "
        f"overlap_weight {c['policy']['overlap_weight']:g}."
    )
    return [trace, "", fleet]


def _row(p: dict) -> str:
    ttft, itl = p["ttft_ms"], p["itl_ms"]
    cells = [
        p["policy"],
        f"{p['hit_ratio']:.1%}",
        " / ".join(_num(ttft[q]) for q in ("p50", "p90", "p99")),
        f"{itl['mean']:.1f} / {itl['p99']:.1f}",
        f"{p['output_tok_s']:,.0f}",
        f"{p['imbalance']:.2f}",
        f"{p['queued']} / {p['rejected']} / {p['too_long']}",
        f"{p['wall_s']:.1f}",
    ]
    return "| " + " | ".join(cells) + " |"


def format_report(report: dict) -> str:
    """The report as markdown: what ran, on what, the table and kv vs round-robin."""
    lines = [*_summary(report), "", HEADER]
    lines += [_row(p) for p in report["policies"]]
    blank = " |" * 6
    lines.append(f"| oracle (unlimited cache) | {report['oracle_hit_ratio']:.1%} |{blank}")
    lines.append(f"| pooled LRU (fleet-size cache) | {report['pooled_lru_hit_ratio']:.1%} |{blank}")
    vs = report.get("kv_vs_round_robin")
    if vs:
        parts = [f"{k.replace('_', ' ')} ×{v:.2f}" for k, v in vs.items() if v is not None]
        lines += ["", "kv vs round_robin: " + ", ".join(parts) + "."]
    m = report["machine"]
    machine_line = (
        f"Machine: {m['platform']}, {m['cpus']} CPUs ({m['processor']}), Python {m['python']}; "
        f"shared CPU, so wall times are noisy. Total wall {report['wall_s']:.0f} s."
    )
    lines += ["", f"Command: `{report['command']}`", "", machine_line]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    kinds = _policies(ns.policies or ("kv" if ns.live else DEFAULT_POLICIES))
    synthetic = ns.trace == "synthetic"
    if ns.live and not synthetic:
        print("basalt bench routing: --live replays the synthetic trace only", file=sys.stderr)
        return 2
    try:
        config = _config(ns, synthetic)
        trace = _trace(ns)
    except (OSError, ValueError) as e:  # bad flag values name the setting; bad trace lines too
        print(f"basalt bench routing: {e}", file=sys.stderr)
        return 2
    if not trace.requests:
        print("basalt bench routing: the trace has no requests", file=sys.stderr)
        return 2
    command = ("basalt bench routing " + shlex.join(argv)).strip()
    if ns.live:
        return _live(ns, trace, replace(config, vocab_size=LIVE_WORKLOAD.vocab_size), kinds,
                     command)
    run(trace, config, kinds, command=command, jobs=ns.jobs, json_out=ns.json,
        markdown=ns.markdown)
    return 0


def _live(
    ns: argparse.Namespace, trace: Trace, config: ReplayConfig, kinds: list[PolicyKind],
    command: str,
) -> int:
    from .routing_live import format_comparison, run_comparison

    rows = run_comparison(trace, config, kinds, ns.live_time_scale)
    m = machine()
    text = format_comparison(rows, command) + (
        f"\n\nMachine: {m['platform']}, {m['cpus']} CPUs, Python {m['python']}; the stack's "
        "processes share these CPUs with the client."
    )
    print(text)
    if ns.json is not None:
        ns.json.write_text(json.dumps({"command": command, "machine": machine(), "rows": rows},
                                      indent=2) + "\n")
    if ns.markdown is not None:
        update_section(ns.markdown, "### live stack vs replay", text, parent=SECTION,
                       parent_intro=INTRO)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
