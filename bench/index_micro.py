"""Microbenchmark of the router core: prefix-index ingest, memory, and decision time (CPU only;
its only I/O is printing a table and, when asked, writing a JSON file).

Workload (seeded, ~1M indexed blocks): 64 replicas of block size 16; 64 shared 4k-token
prefixes, each replica holding 8 of them plus 18 sessions of 768 more blocks chained to one of
its prefixes. Events are vLLM-shaped: prefill chunks of 128 blocks and 1-block decode events,
16 events per batch, batches interleaved across replicas. Engine hashes are random per replica
(each engine hashes differently), so the index must chain its own hashes.

Decision = hash a 16k-token prompt (1,024 blocks), packed once beforehand as the router packs
it where it tokenizes (`hashing.pack_tokens`, timed apart), + `PrefixIndex.match` +
`policy.choose` (`kv`) over 64 replica views. "hit" prompts are a cached session (1,024
leading blocks on one replica, 256 on the ~8 holding its prefix). "miss" prompts share
nothing. "holes": the same hits after every replica lost one block mid-sequence (not
prefix-closed any more; the dict index of before walked those block by block). Figures are
wall-clock on a shared machine: expect noise. The markdown table sets them beside `BEFORE`,
the figures of the index of before issue 17 (BLAKE2b per block in Python, dict-backed).
"""

from __future__ import annotations

import gc
import json
import random
import sys
import time
import tracemalloc
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from basalt.ids import ReplicaId
from basalt.kvevents import BlockRemoved, BlockStored, KvEvent, KvEventBatchData
from services.router.core.hashing import pack_tokens
from services.router.core.index import PrefixIndex
from services.router.core.policy import choose
from services.router.core.types import Candidate, PolicyConfig, RouteRequest


@dataclass(slots=True, frozen=True)
class Workload:
    replicas: int = 64
    block_size: int = 16
    prefixes: int = 64
    prefix_blocks: int = 256
    prefixes_per_replica: int = 8
    sessions_per_replica: int = 18
    session_blocks: int = 768
    prefill_chunk_blocks: int = 128
    decode_blocks_per_session: int = 128
    events_per_batch: int = 16
    requests: int = 300
    seed: int = 0


@dataclass(slots=True, frozen=True)
class _Plan:
    prefixes: list[list[int]]  # per replica: the prefix ids it holds
    sessions: list[list[int]]  # per replica: the prefix id of each of its sessions


def _tokens(key: str, n: int) -> list[int]:
    return array("H", random.Random(key).randbytes(2 * n)).tolist()


def _engine_hashes(key: str, n: int) -> list[int]:
    rng = random.Random("engine:" + key)
    return [rng.getrandbits(64) for _ in range(n)]


def _plan(w: Workload) -> _Plan:
    rng = random.Random(w.seed)
    prefixes = [rng.sample(range(w.prefixes), w.prefixes_per_replica) for _ in range(w.replicas)]
    sessions = [[rng.choice(p) for _ in range(w.sessions_per_replica)] for p in prefixes]
    return _Plan(prefixes, sessions)


def _prefix_key(w: Workload, p: int) -> str:
    return f"{w.seed}:prefix:{p}"


def _session_key(w: Workload, r: int, s: int) -> str:
    return f"{w.seed}:session:{r}:{s}"


def _stored_run(
    w: Workload, hashes: list[int], tokens: list[int], parent: int | None, chunks: list[int]
) -> Iterator[BlockStored]:
    """BlockStored events over `hashes`/`tokens`, `chunks` blocks at a time."""
    bs, i = w.block_size, 0
    for n in chunks:
        yield BlockStored(hashes[i : i + n], parent, tokens[i * bs : (i + n) * bs], bs)
        parent = hashes[i + n - 1]
        i += n


def _replica_events(w: Workload, plan: _Plan, r: int) -> Iterator[KvEvent]:
    last_of_prefix: dict[int, int] = {}
    prefill = [w.prefill_chunk_blocks] * (w.prefix_blocks // w.prefill_chunk_blocks)
    for p in plan.prefixes[r]:
        hashes = _engine_hashes(f"{w.seed}:{r}:p{p}", w.prefix_blocks)
        last_of_prefix[p] = hashes[-1]
        yield from _stored_run(
            w, hashes, _tokens(_prefix_key(w, p), w.prefix_blocks * w.block_size), None, prefill
        )
    decode = w.decode_blocks_per_session
    n_prefill = (w.session_blocks - decode) // w.prefill_chunk_blocks
    chunks = [w.prefill_chunk_blocks] * n_prefill + [1] * (
        w.session_blocks - n_prefill * w.prefill_chunk_blocks
    )
    for s, p in enumerate(plan.sessions[r]):
        key = _session_key(w, r, s)
        hashes = _engine_hashes(key, w.session_blocks)
        tokens = _tokens(key, w.session_blocks * w.block_size)
        yield from _stored_run(w, hashes, tokens, last_of_prefix[p], chunks)


def _batches(w: Workload, plan: _Plan) -> Iterator[KvEventBatchData]:
    """Every replica's events in batches, replicas interleaved round-robin."""
    streams = [_replica_events(w, plan, r) for r in range(w.replicas)]
    seqs = [0] * w.replicas
    live = list(range(w.replicas))
    while live:
        for r in list(live):
            events = [e for _, e in zip(range(w.events_per_batch), streams[r])]
            if not events:
                live.remove(r)
                continue
            yield KvEventBatchData(f"replica-{r:02d}", seqs[r], 0.0, "epoch-0", events)
            seqs[r] += 1


def _ingest(w: Workload, plan: _Plan, index: PrefixIndex) -> tuple[float, int, int]:
    """Apply every batch; returns (seconds inside apply, events, blocks)."""
    spent, events, blocks = 0.0, 0, 0
    for batch in _batches(w, plan):
        t0 = time.perf_counter()
        result = index.apply(batch)
        spent += time.perf_counter() - t0
        events += len(batch.events)
        blocks += result.stored_blocks
    return spent, events, blocks


def _measure_memory(w: Workload, plan: _Plan) -> tuple[int, int, int]:
    """(bytes the built index holds by tracemalloc, its blocks, its distinct hashes)."""
    gc.collect()
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    index = PrefixIndex()
    _ingest(w, plan, index)
    gc.collect()
    held = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    stats = index.stats()
    return held, stats.blocks, stats.distinct_hashes


def _views(w: Workload, rng: random.Random) -> list[Candidate]:
    return [
        Candidate(
            replica_id=ReplicaId(f"replica-{r:02d}"),
            region="us-east" if r % 2 else "us-west",
            kv_block_size=w.block_size,
            kv_blocks_total=40_000,
            kv_blocks_active=rng.randrange(0, 20_000),
            num_running=rng.randrange(0, 32),
            num_waiting=rng.randrange(0, 4),
        )
        for r in range(w.replicas)
    ]


def _pct(xs: list[float], q: float) -> float:
    ordered = sorted(xs)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _decisions(w: Workload, plan: _Plan, index: PrefixIndex, hit: bool) -> dict[str, float]:
    """Per-decision and per-step times in microseconds (p50, p99). Hits use every session
    but each replica's last (see `_punch_holes`)."""
    rng = random.Random(w.seed + (1 if hit else 2))
    views, config = _views(w, rng), PolicyConfig()
    hasher = index.hasher
    total, t_hash, t_match, t_policy, t_pack = [], [], [], [], []
    prompt_blocks = w.prefix_blocks + w.session_blocks
    for i in range(w.requests):
        if hit:
            r, s = rng.randrange(w.replicas), rng.randrange(w.sessions_per_replica - 1)
            p = plan.sessions[r][s]
            tokens = _tokens(_prefix_key(w, p), w.prefix_blocks * w.block_size)
            tokens += _tokens(_session_key(w, r, s), w.session_blocks * w.block_size)
        else:
            tokens = _tokens(f"miss:{i}", prompt_blocks * w.block_size)
        request = RouteRequest(len(tokens), prompt_blocks, region="us-east")
        tp = time.perf_counter_ns()
        packed = pack_tokens(tokens)  # done once per request where the prompt is tokenized
        t0 = time.perf_counter_ns()
        hashes = hasher(packed, w.block_size)
        t1 = time.perf_counter_ns()
        overlap = index.match(hashes)
        t2 = time.perf_counter_ns()
        decision = choose(request, views, overlap, config, now=0.0)
        t3 = time.perf_counter_ns()
        assert decision is not None
        if hit:
            assert overlap[ReplicaId(f"replica-{r:02d}")] == prompt_blocks, "bench workload broken"
        total.append((t3 - t0) / 1e3)
        t_hash.append((t1 - t0) / 1e3)
        t_match.append((t2 - t1) / 1e3)
        t_policy.append((t3 - t2) / 1e3)
        t_pack.append((t0 - tp) / 1e3)
    return {
        "min_us": min(total),
        "p50_us": _pct(total, 0.5),
        "p99_us": _pct(total, 0.99),
        "hash_p50_us": _pct(t_hash, 0.5),
        "match_p50_us": _pct(t_match, 0.5),
        "match_p99_us": _pct(t_match, 0.99),
        "policy_p50_us": _pct(t_policy, 0.5),
        "pack_p50_us": _pct(t_pack, 0.5),
    }


def _removal_rate(w: Workload, plan: _Plan, index: PrefixIndex) -> tuple[float, int]:
    """Evict half of every replica's sessions with 16-hash BlockRemoved events: (s, blocks)."""
    spent, blocks = 0.0, 0
    for r in range(w.replicas):
        epoch_seq = index.seq_of(ReplicaId(f"replica-{r:02d}"))
        assert epoch_seq is not None
        seq = epoch_seq[1]
        for s in range(0, w.sessions_per_replica, 2):
            hashes = _engine_hashes(_session_key(w, r, s), w.session_blocks)
            events: list[KvEvent] = [
                BlockRemoved(hashes[i : i + 16]) for i in range(0, len(hashes), 16)
            ]
            seq += 1
            batch = KvEventBatchData(f"replica-{r:02d}", seq, 0.0, "epoch-0", events)
            t0 = time.perf_counter()
            blocks += index.apply(batch).removed_blocks
            spent += time.perf_counter() - t0
    return spent, blocks


def _punch_holes(w: Workload, index: PrefixIndex) -> int:
    """Evict one block mid-way through each replica's last session: every replica then holds
    blocks without their parent, so `match` must walk it block by block. Returns open count."""
    for r in range(w.replicas):
        rid = ReplicaId(f"replica-{r:02d}")
        epoch_seq = index.seq_of(rid)
        assert epoch_seq is not None
        hashes = _engine_hashes(_session_key(w, r, w.sessions_per_replica - 1), w.session_blocks)
        removed = [BlockRemoved([hashes[len(hashes) // 2]])]
        index.apply(KvEventBatchData(rid, epoch_seq[1] + 1, 0.0, "epoch-0", list(removed)))
    return index.stats().open_replicas


# `basalt bench index` on the same machine before issue 17 (BLAKE2b per block in Python over
# a list prompt, so packing was inside "hash"; dict-backed index), from docs/benchmarks.md.
BEFORE: dict[str, float] = {
    "hit_p50_us": 575, "hit_p99_us": 672, "hit_min_us": 560, "hit_hash_p50_us": 491,
    "hit_match_p50_us": 29, "hit_policy_p50_us": 53, "hit_match_p99_us": 68,
    "holes_p50_us": 943, "holes_p99_us": 1216, "holes_match_p50_us": 371,
    "miss_p50_us": 540, "miss_p99_us": 618, "miss_min_us": 526,
    "ingest_events_per_s": 71_788, "ingest_blocks_per_s": 472_788,
    "remove_blocks_per_s": 592_733, "blocks_indexed": 1_015_808, "distinct_hashes": 901_120,
    "bytes_per_block": 229, "index_mib": 222,
}


def _rows(f: dict[str, float]) -> list[tuple[str, str]]:
    pack = f"{f['hit_pack_p50_us']:.0f} µs" if "hit_pack_p50_us" in f else "(in hash)"
    return [
        (
            "decision p50 / p99, hit (1,024-block prefix)",
            f"{f['hit_p50_us']:.0f} / {f['hit_p99_us']:.0f} µs (min {f['hit_min_us']:.0f})",
        ),
        (
            "  of which hash / match / policy (p50)",
            f"{f['hit_hash_p50_us']:.0f} / {f['hit_match_p50_us']:.0f} / {f['hit_policy_p50_us']:.0f} µs",
        ),
        ("  match p99", f"{f['hit_match_p99_us']:.0f} µs"),
        ("packing the prompt, once where it is tokenized (p50)", pack),
        (
            "decision p50 / p99, hit, replicas with holes",
            (
                f"{f['holes_p50_us']:.0f} / {f['holes_p99_us']:.0f} µs"
                f" (match p50 {f['holes_match_p50_us']:.0f} µs)"
            ),
        ),
        (
            "decision p50 / p99, miss",
            f"{f['miss_p50_us']:.0f} / {f['miss_p99_us']:.0f} µs (min {f['miss_min_us']:.0f})",
        ),
        (
            "ingest (BlockStored)",
            f"{f['ingest_events_per_s']:,.0f} events/s, {f['ingest_blocks_per_s']:,.0f} blocks/s",
        ),
        ("ingest (BlockRemoved)", f"{f['remove_blocks_per_s']:,.0f} blocks/s"),
        (
            "blocks indexed (replica × block) / distinct",
            f"{f['blocks_indexed']:,} / {f['distinct_hashes']:,}",
        ),
        ("memory per indexed block (tracemalloc)", f"{f['bytes_per_block']:.0f} B"),
        ("memory, whole index", f"{f['index_mib']:.0f} MiB"),
    ]


def _table(f: dict[str, float], before: dict[str, float] | None = None) -> str:
    """The figures as a markdown table; with `before`, a column of those beside them."""
    if before is None:
        lines = ["| measure | value |", "| --- | --- |"]
        return "\n".join(lines + [f"| {k} | {v} |" for k, v in _rows(f)])
    lines = ["| measure | before (issue 17) | now |", "| --- | --- | --- |"]
    old = dict(_rows(before))
    return "\n".join(lines + [f"| {k} | {old[k]} | {v} |" for k, v in _rows(f)])


def run(json_out: Path | None = None, workload: Workload | None = None) -> dict:
    """Run the benchmark, print a markdown table, return the figures (and write them as JSON)."""
    w = workload or Workload()
    started = time.perf_counter()
    plan = _plan(w)
    held, blocks, distinct = _measure_memory(w, plan)
    index = PrefixIndex()
    spent, events, stored = _ingest(w, plan, index)
    figures: dict = {
        "replicas": w.replicas,
        "blocks_indexed": blocks,
        "distinct_hashes": distinct,
        "bytes_per_block": held / blocks,
        "index_mib": held / 2**20,
        "ingest_events_per_s": events / spent,
        "ingest_blocks_per_s": stored / spent,
    }
    for hit in (True, False):
        for k, v in _decisions(w, plan, index, hit).items():
            figures[("hit_" if hit else "miss_") + k] = v
    figures["open_replicas"] = _punch_holes(w, index)
    for k, v in _decisions(w, plan, index, True).items():
        figures["holes_" + k] = v
    removed_s, removed = _removal_rate(w, plan, index)
    figures["remove_blocks_per_s"] = removed / removed_s
    figures["wall_s"] = time.perf_counter() - started
    figures["workload"] = asdict(w)
    print(_table(figures))
    print(f"\n(wall {figures['wall_s']:.1f} s; Python {sys.version.split()[0]}; shared CPU, noisy)")
    if json_out is not None:
        json_out.write_text(json.dumps(figures, indent=2))
    return figures


def main(argv: list[str]) -> int:
    """`basalt bench index [--json OUT] [--markdown docs/benchmarks.md]`."""
    import argparse

    from bench.report import machine_line, update_section

    p = argparse.ArgumentParser(prog="basalt bench index", description=__doc__)
    p.add_argument("--json", type=Path, help="write the figures as JSON here")
    p.add_argument("--markdown", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md",
                   help="update the Index section of this file ('' to skip)")
    ns = p.parse_args(argv)
    figures = run(ns.json)
    if ns.markdown and str(ns.markdown) not in ("", "."):
        body = (
            f"Command: `basalt bench index {' '.join(argv)}`".rstrip() + "  \n"
            f"Machine: {machine_line()}; "
            f"{figures['replicas']} replicas, 16k-token prompt (1,024 blocks of 16). "
            "p99 figures on this shared machine include scheduler noise. \"before\" is the index "
            "of before issue 17 (BLAKE2b per block in Python, dicts), same command and machine.\n\n"
            + _table(figures, BEFORE) + "\n"
        )
        update_section(ns.markdown, "## Index microbenchmark (`basalt bench index`)", body)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
