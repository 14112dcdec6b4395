"""`basalt bench routing --live`: the same trace through the real stack (nats-server, simulator
runtimes and the router as processes, requests over HTTP in scaled time), compared with the
replay of that trace (does I/O: processes, NATS, HTTP).

Replica i of the replay and of the live fleet are both `replica-i`, so per-request routes can
be compared one to one. Live timings map to virtual time through `time_scale` (wall seconds
per simulated second): the runtimes report load every `load_report_s * time_scale` wall
seconds, and the replay's event delay is set to the live KV batch interval, in virtual time.
The live fleet runs on this machine's CPUs, so when they are busy it falls behind virtual time
and its picture drifts from the replay's: the comparison says by how much.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

import httpx
from nats.js.errors import NoKeysError

from basalt import bus, subjects
from basalt_tools.natsserver import NatsServer, free_port
from services.router.core.types import PolicyKind

from .replay import PolicyResult, ReplayConfig, percentiles, prepare, replay
from .traces import Trace

REPO = Path(__file__).resolve().parent.parent
MODEL = "bench"
KV_BATCH_WALL_S = 0.005  # the runtimes' --kv-batch-interval


@dataclass(slots=True)
class LiveOutcome:
    replica: str = ""
    cached_tokens: int = 0
    prompt_tokens: int = 0
    ttft_s: float = 0.0
    error: str = ""


@dataclass(slots=True, frozen=True)
class LiveResult:
    policy: str
    outcomes: list[LiveOutcome]
    wall_s: float

    @property
    def hit_ratio(self) -> float:
        prompt = sum(o.prompt_tokens for o in self.outcomes if not o.error)
        return sum(o.cached_tokens for o in self.outcomes if not o.error) / prompt if prompt else 0.0


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "ab") as out:  # the child keeps its own copy of the fd
        return subprocess.Popen(
            [sys.executable, "-m", *args], cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )


def _wait_file(path: Path, proc: subprocess.Popen[bytes], log: Path, timeout: float) -> dict:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text(errors="replace")[-3000:] if log.exists() else ""
            raise RuntimeError(f"{path.name} never appeared (exit {proc.poll()}):\n{tail}")
        time.sleep(0.1)
    return json.loads(path.read_text())


def _runtime_args(config: ReplayConfig, i: int, nats_url: str, ready: Path, scale: float) -> list[str]:
    return [
        "services.runtime", "--engine", "sim", "--deployment", f"{MODEL}-v1",
        "--model-name", MODEL, "--replica-id", f"replica-{i}", "--grpc-port", str(free_port()),
        "--nats-url", nats_url, "--ready-file", str(ready), "--sim-time-scale", str(scale),
        "--sim-num-blocks", str(config.num_blocks), "--block-size", str(config.block_size),
        "--max-model-len", str(config.max_model_len), "--max-num-seqs", str(config.max_num_seqs),
        "--sim-seed", str(config.sim_seed), "--load-report-interval",
        str(config.load_report_s * scale), "--kv-batch-interval", str(KV_BATCH_WALL_S),
        "--heartbeat-interval", "1", "--metrics-port", "0",
    ]


def _deployments(path: Path, config: ReplayConfig, kind: PolicyKind) -> Path:
    dep = {"id": f"{MODEL}-v1", "model": MODEL, "engine": "sim", "routing_policy": kind.value,
           "queue_limit": config.queue_limit, "queue_timeout_s": config.queue_timeout_s}
    path.write_text(json.dumps({"deployments": [dep], "environments": []}))  # JSON is YAML
    return path


async def _wait_replicas(nats_url: str, n: int, timeout: float = 60.0) -> None:
    """Until the replicas bucket holds all `n` records (the router watches the same bucket)."""
    nc = await bus.connect(nats_url, name="bench-live")
    try:
        bucket = await bus.kv_bucket(nc, subjects.REPLICAS_BUCKET, subjects.REPLICAS_TTL_S)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if len(await bus.kv_items(bucket)) >= n:
                    break
            except NoKeysError:
                pass
            await asyncio.sleep(0.2)
        else:
            raise TimeoutError(f"{n} replicas never registered")
    finally:
        await nc.close()
    await asyncio.sleep(1.0)  # the router's watcher and the first load reports


async def _send(client: httpx.AsyncClient, body: dict, at: float) -> LiveOutcome:
    await asyncio.sleep(max(0.0, at - time.monotonic()))
    out = LiveOutcome(prompt_tokens=len(body["prompt"]))
    start = time.monotonic()
    try:
        async with client.stream("POST", "/v1/completions", json=body) as r:
            out.ttft_s = time.monotonic() - start
            if r.status_code != 200:
                out.error = f"HTTP {r.status_code}: {(await r.aread())[:200]!r}"
                return out
            out.replica = r.headers.get("x-basalt-replica", "")
            async for line in r.aiter_lines():
                if line.startswith("data: {") and '"usage"' in line:
                    usage = json.loads(line[6:]).get("usage") or {}
                    details = usage.get("prompt_tokens_details") or {}
                    out.cached_tokens = details.get("cached_tokens", 0)
                    out.prompt_tokens = usage.get("prompt_tokens", out.prompt_tokens)
    except httpx.HTTPError as e:
        out.error = f"{type(e).__name__}: {e}"
    return out


async def _replay_over_http(base_url: str, trace: Trace, scale: float) -> list[LiveOutcome]:
    t0 = time.monotonic() + 0.5
    first = trace.requests[0].arrival_s
    limits = httpx.Limits(max_connections=1000, max_keepalive_connections=100)
    async with httpx.AsyncClient(base_url=base_url, timeout=600, limits=limits) as client:
        tasks = [
            _send(client, {"model": MODEL, "prompt": r.prompt.tolist(), "max_tokens": r.output_tokens,
                           "stream": True, "stream_options": {"include_usage": True}},
                  t0 + (r.arrival_s - first) * scale)
            for r in trace.requests
        ]
        return list(await asyncio.gather(*tasks))


def run_live(trace: Trace, config: ReplayConfig, kind: PolicyKind, scale: float) -> LiveResult:
    """Start the stack, send the trace, stop the stack; every process is ended on the way out."""
    procs: list[subprocess.Popen[bytes]] = []
    with tempfile.TemporaryDirectory(prefix="basalt-live-") as tmp:
        work = Path(tmp)
        nats = NatsServer(store_dir=work / "nats", log_file=work / "nats.log").start()
        try:
            for i in range(config.replicas):
                ready = work / f"replica-{i}.ready.json"
                args = _runtime_args(config, i, nats.url, ready, scale)
                procs.append(_spawn(args, work / f"replica-{i}.log"))
            for i, proc in enumerate(procs):
                _wait_file(work / f"replica-{i}.ready.json", proc, work / f"replica-{i}.log", 120)
            router_ready = work / "router.ready.json"
            procs.append(_spawn([
                "services.router", "--nats-url", nats.url, "--http-port", "0",
                "--grpc-port", "0", "--metrics-port", "0", "--ready-file", str(router_ready),
                "--deployments-file", str(_deployments(work / "deployments.yaml", config, kind)),
                "--overlap-weight", str(config.policy.overlap_weight), "--seed", str(config.seed),
            ], work / "router.log"))
            ports = _wait_file(router_ready, procs[-1], work / "router.log", 60)
            asyncio.run(_wait_replicas(nats.url, config.replicas))
            started = time.monotonic()
            outcomes = asyncio.run(
                _replay_over_http(f"http://127.0.0.1:{ports['http_port']}", trace, scale)
            )
            return LiveResult(kind.value, outcomes, time.monotonic() - started)
        finally:
            for proc in reversed(procs):
                proc.terminate()
            for proc in procs:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nats.stop()


def live_replay_config(config: ReplayConfig, scale: float) -> ReplayConfig:
    """The replay settings that mirror the live stack (event delay = its KV batch interval)."""
    return replace(config, event_delay_s=max(config.event_delay_s, KV_BATCH_WALL_S / scale))


def stickiness(sessions: list[str | None], replicas: list[str]) -> float:
    """Share of follow-up turns served where the conversation's previous turn was."""
    last: dict[str, str] = {}
    stayed = follow_ups = 0
    for session, replica in zip(sessions, replicas):
        if session is None or not replica:
            continue
        if session in last:
            follow_ups += 1
            stayed += last[session] == replica
        last[session] = replica
    return stayed / follow_ups if follow_ups else 0.0


def compare(
    trace: Trace, live: LiveResult, replayed: PolicyResult, scale: float, replicas: int
) -> dict:
    """Hit ratio, per-replica counts, stickiness, TTFT and per-request agreement."""
    ids = [f"replica-{i}" for i in range(replicas)]
    ok = [o for o in live.outcomes if not o.error]
    replay_routes = [f"replica-{r}" if r >= 0 else "" for r in replayed.routes]
    same = sum(1 for o, r in zip(live.outcomes, replay_routes) if o.replica == r)
    sessions = [r.session_id for r in trace.requests]
    return {
        "policy": live.policy,
        "requests": len(live.outcomes),
        "live_errors": len(live.outcomes) - len(ok),
        "hit_ratio": {"replay": replayed.hit_ratio, "live": live.hit_ratio},
        "assigned": {
            "replay": [replayed.assigned.get(i, 0) for i in ids],
            "live": [sum(1 for o in ok if o.replica == i) for i in ids],
        },
        "same_replica": same / len(live.outcomes) if live.outcomes else 0.0,
        "stickiness": {
            "replay": stickiness(sessions, replay_routes),
            "live": stickiness(sessions, [o.replica for o in live.outcomes]),
        },
        "ttft_ms_virtual": {
            "replay": replayed.ttft_ms,
            "live": {k: v * 1000 / scale for k, v in percentiles([o.ttft_s for o in ok]).items()},
        },
        "live_wall_s": live.wall_s,
    }


def run_comparison(
    trace: Trace, config: ReplayConfig, kinds: list[PolicyKind], scale: float
) -> list[dict]:
    """For each policy: replay the trace, run it live, compare."""
    config = live_replay_config(config, scale)
    prepared = prepare(trace, config)
    rows = []
    for kind in kinds:
        replayed = replay(prepared, config, kind)
        live = run_live(trace, config, kind, scale)
        rows.append(compare(trace, live, replayed, scale, config.replicas))
    return rows


def format_comparison(rows: list[dict], command: str) -> str:
    lines = [
        (
            "| policy | run | prefix hit | follow-ups on the previous turn's replica "
            "| requests per replica | TTFT p50 / p99 (virtual ms) |"
        ),
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        for run in ("replay", "live"):
            ttft = row["ttft_ms_virtual"][run]
            per = " / ".join(str(n) for n in row["assigned"][run])
            lines.append(f"| {row['policy']} | {run} | {row['hit_ratio'][run]:.1%} | "
                         f"{row['stickiness'][run]:.1%} | {per} | "
                         f"{ttft['p50']:.0f} / {ttft['p99']:.0f} |")
    for row in rows:
        lines.append(f"\n{row['policy']}: {row['same_replica']:.0%} of requests went to the same "
                     f"replica live as in the replay; {row['live_errors']} live errors; live run "
                     f"{row['live_wall_s']:.0f} s wall.")
    lines.append(f"\nCommand: `{command}`")
    return "\n".join(lines)
