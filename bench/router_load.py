"""`basalt bench router`: streamed requests per second per router core, with simulator replicas
behind it (does I/O: nats-server, runtimes, the router and load generators as processes).

The replicas run the simulator at a tiny time scale, so they answer at once and the router is
what is measured. Load comes from separate client processes (asyncio + httpx, keep-alive,
each holding `--concurrency` streams open), so the client's own CPU is not the router's. The
figure is completed streamed requests ÷ CPU seconds the router's processes used (user +
system, from /proc), so it reads the same whatever else shares the machine; wall req/s is
reported beside it. Each run is one row: `--workers` 1, 2, ... side by side, each with the
access log on (one JSON line per request written to the router's log, `--log-level info`) or
off (`--no-access-log --log-level warning`), as `--access-log` asks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from basalt_tools.natsserver import NatsServer, free_port

from .report import machine_line, update_section
from .routing_live import _spawn, _wait_file, _wait_replicas

REPO = Path(__file__).resolve().parent.parent
HEADING = "## Router: streamed requests per core (`basalt bench router`)"
MODEL = "rbench"

# One client process: `conc` streams for `seconds`; prints {"done": n, "tokens": t, "errors": e}.
_CLIENT = r"""
import asyncio, json, sys, time
import httpx
url, conc, seconds, max_tokens = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
async def main():
    done = tokens = errors = 0
    body = {"model": "rbench", "messages": [{"role": "user", "content": "hello there"}],
            "max_tokens": max_tokens, "stream": True, "ignore_eos": True}
    limits = httpx.Limits(max_connections=conc, max_keepalive_connections=conc)
    async with httpx.AsyncClient(timeout=30, limits=limits) as c:
        end = time.monotonic() + seconds
        async def worker():
            nonlocal done, tokens, errors
            while time.monotonic() < end:
                try:
                    async with c.stream("POST", url, json=body) as r:
                        if r.status_code != 200:
                            errors += 1
                            await r.aread()
                            continue
                        async for line in r.aiter_lines():
                            if line.startswith("data: {"):
                                tokens += 1
                    done += 1
                except httpx.HTTPError:
                    errors += 1
        await asyncio.gather(*(worker() for _ in range(conc)))
    print(json.dumps({"done": done, "tokens": tokens, "errors": errors}))
asyncio.run(main())
"""


@dataclass(slots=True)
class Row:
    workers: int
    clients: int
    concurrency: int
    max_tokens: int
    seconds: float
    requests: int
    errors: int
    router_cpu_s: float
    access_log: bool = False

    @property
    def req_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def req_per_core_s(self) -> float:
        return self.requests / self.router_cpu_s if self.router_cpu_s else 0.0


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds the processes used so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime, stime
    return total


def _replicas(args: argparse.Namespace, nats: NatsServer, tmp: Path
              ) -> list[subprocess.Popen[bytes]]:
    procs = []
    for i in range(args.replicas):
        ready, log = tmp / f"rt-{i}.json", tmp / f"rt-{i}.log"
        procs.append(_spawn([
            "services.runtime", "--engine", "sim", "--deployment", f"{MODEL}-v1",
            "--model-name", MODEL, "--replica-id", f"rb-{i}", "--grpc-port", str(free_port()),
            "--nats-url", nats.url, "--ready-file", str(ready), "--sim-time-scale", "0.0001",
            "--max-num-seqs", "256", "--metrics-port", "0", "--heartbeat-interval", "1"], log))
        _wait_file(ready, procs[-1], log, 90)
    asyncio.run(_wait_replicas(nats.url, args.replicas))
    return procs


def _one(workers: int, args: argparse.Namespace, nats: NatsServer, tmp: Path,
         access_log: bool = False) -> Row:
    deps = tmp / "deployments.json"
    deps.write_text(json.dumps({"deployments": [
        {"id": f"{MODEL}-v1", "model": MODEL, "engine": "sim", "routing_policy": "kv"}],
        "environments": []}))
    name = f"router-{workers}-{'log' if access_log else 'nolog'}"
    ready, log = tmp / f"{name}.json", tmp / f"{name}.log"
    logging = ["--log-level", "info"] if access_log else ["--no-access-log", "--log-level",
                                                           "warning"]
    router = _spawn(["services.router", "--nats-url", nats.url, "--http-port", "0",
                     "--grpc-port", "0", "--metrics-port", "0", "--deployments-file", str(deps),
                     "--workers", str(workers), "--ready-file", str(ready), *logging], log)
    try:
        info = _wait_file(ready, router, log, 90)
        pids = [router.pid, *info.get("pids", [])]
        url = f"http://127.0.0.1:{info['http_port']}/v1/chat/completions"
        _clients(url, args, 2.0)  # warm-up: connections, caches, first-call costs
        cpu0, t0 = cpu_seconds(pids), time.monotonic()
        results = _clients(url, args, args.seconds)
        seconds, cpu = time.monotonic() - t0, cpu_seconds(pids) - cpu0
        return Row(workers, args.clients, args.concurrency, args.max_tokens, seconds,
                   sum(r["done"] for r in results), sum(r["errors"] for r in results), cpu,
                   access_log)
    finally:
        router.terminate()
        try:
            router.wait(timeout=20)
        except subprocess.TimeoutExpired:
            router.kill()


def _clients(url: str, args: argparse.Namespace, seconds: float) -> list[dict]:
    clients = [subprocess.Popen([sys.executable, "-c", _CLIENT, url, str(args.concurrency),
                                 str(seconds), str(args.max_tokens)], stdout=subprocess.PIPE,
                                text=True) for _ in range(args.clients)]
    return [json.loads(c.communicate(timeout=seconds + 60)[0]) for c in clients]


def format_table(rows: list[Row], command: str) -> str:
    lines = [f"Command: `{command}`  ", (f"Machine: {machine_line()}; simulator replicas at "
             "time scale 0.0001 (they answer at once); clients in their own processes."), "",
             ("| router workers | access log | clients × streams | tokens per request | requests "
              "| errors | wall req/s | router CPU s | streamed req/s per router core |"),
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r.workers} | {'on' if r.access_log else 'off'} | {r.clients} × "
                     f"{r.concurrency} | {r.max_tokens} | {r.requests} | {r.errors} | "
                     f"{r.req_per_s:.0f} | {r.router_cpu_s:.1f} | {r.req_per_core_s:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="basalt bench router", description=__doc__)
    p.add_argument("--workers", default="1,2", help="router worker counts, one row each")
    p.add_argument("--replicas", type=int, default=2)
    p.add_argument("--clients", type=int, default=2, help="load-generator processes")
    p.add_argument("--concurrency", type=int, default=16, help="streams per client")
    p.add_argument("--max-tokens", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--access-log", default="on", choices=("on", "off", "both"),
                   help="the router's access log per row (both: an off and an on row per "
                        "worker count, side by side)")
    p.add_argument("--out", type=Path, help="write the rows as JSON here")
    p.add_argument("--no-docs", action="store_true", help="do not update docs/benchmarks.md")
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="basalt-bench-router-") as d:
        work = Path(d)
        nats = NatsServer(store_dir=work / "nats", log_file=work / "nats.log").start()
        replicas: list[subprocess.Popen[bytes]] = []
        try:
            replicas = _replicas(args, nats, work)
            logs = {"on": (True,), "off": (False,), "both": (False, True)}[args.access_log]
            for w in (int(x) for x in args.workers.split(",")):
                for access_log in logs:
                    rows.append(_one(w, args, nats, work, access_log))
                    print(format_table(rows[-1:], "").splitlines()[-1], flush=True)
        finally:
            for proc in replicas:
                proc.terminate()
            for proc in replicas:
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            nats.stop()
    command = "basalt bench router " + " ".join(argv if argv is not None else sys.argv[1:])
    table = format_table(rows, command.strip())
    print(table)
    if args.out:
        args.out.write_text(json.dumps([asdict(r) for r in rows], indent=2))
    if not args.no_docs:
        update_section(REPO / "docs" / "benchmarks.md", HEADING, table)
    return 0
