"""Router workers: N router processes serving one HTTP port and one gRPC port (does I/O).

One router process is one Python event loop on one core. `--workers N` starts N of them, each a
whole router (its NATS connection, watchers, prefix index, dispatcher and both doors), bound
to the same ports with SO_REUSEPORT, so the kernel spreads new connections across them. They
share no memory: each builds its index from the same KV events, so every worker routes a
repeated prefix to the replica that holds it. This process only supervises: it picks the
ports, starts the workers, writes the ready file once all are serving, restarts a worker that
dies, and stops them all on SIGTERM.

Each worker serves its own /metrics: `--metrics-port` + its index (9101, 9102, ... by
default), or a free port each with `--metrics-port 0`; the ready file lists them.

A worker's own queue and in-flight counts are its own: with N workers, a deployment's
`queue_limit` is per worker, and each worker's load view adds only the work it routed itself
to the replicas' load reports (which carry everyone's).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from basalt.lifeline import die_with_parent
from basalt.log import get_logger

from .config import RouterSettings

log = get_logger(__name__)

# Flags the supervisor sets per worker (any value the caller gave is replaced).
_PER_WORKER = ("--http-port", "--grpc-port", "--metrics-port", "--ready-file", "--workers",
               "--worker-index")
READY_TIMEOUT_S = 60.0
STOP_GRACE_S = 15.0
RESTART_DELAY_S = 1.0


def child_argv(argv: list[str], overrides: dict[str, str]) -> list[str]:
    """`argv` without the per-worker flags (as `--flag value` or `--flag=value`), then
    `overrides` as `--flag value` pairs (pure)."""
    out: list[str] = []
    skip = False
    for arg in argv:
        if skip:
            skip = False
            continue
        name = arg.split("=", 1)[0]
        if name in _PER_WORKER:
            skip = "=" not in arg
            continue
        out.append(arg)
    for flag, value in overrides.items():
        out += [flag, value]
    return out


def reserve_port(host: str, port: int) -> socket.socket:
    """A socket bound (not listening) to host:port with SO_REUSEPORT: it fixes a free port
    when `port` is 0, and holds it while the workers bind the same port."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind((host, port))
    return sock


def listening_socket(host: str, port: int) -> socket.socket:
    """The HTTP door's socket for one worker: SO_REUSEPORT, listening."""
    sock = reserve_port(host, port)
    sock.listen(2048)
    sock.setblocking(False)
    return sock


class _Worker:
    def __init__(self, index: int, argv: list[str], ready: Path) -> None:
        self.index = index
        self.argv = argv
        self.ready = ready
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.ready.unlink(missing_ok=True)
        self.proc = subprocess.Popen([sys.executable, "-m", "services.router", *self.argv],
                                     preexec_fn=_die_with_parent)  # noqa: PLW1509 - no threads here

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def _die_with_parent() -> None:
    """In the worker, before exec: SIGTERM when the supervisor dies, so a killed supervisor
    leaves no worker behind (not Linux: workers outlive a SIGKILLed supervisor)."""
    die_with_parent(signal.SIGTERM)


def supervise(s: RouterSettings, argv: list[str]) -> int:
    """Run `s.workers` router workers on the same ports until SIGTERM/SIGINT."""
    http = reserve_port(s.http_host, s.http_port)
    grpc_sock = reserve_port(s.grpc_host, s.grpc_port)
    http_port, grpc_port = http.getsockname()[1], grpc_sock.getsockname()[1]
    tmp = Path(tempfile.mkdtemp(prefix="basalt-router-workers-"))
    workers = []
    for i in range(s.workers):
        metrics_port = s.metrics_port + i if s.metrics_port else 0
        ready = tmp / f"worker-{i}.json"
        workers.append(_Worker(i, child_argv(argv, {
            "--http-port": str(http_port), "--grpc-port": str(grpc_port),
            "--metrics-port": str(metrics_port), "--ready-file": str(ready),
            "--worker-index": str(i)}), ready))
    stopping = False

    def _stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    for w in workers:
        w.start()
    try:
        if not _wait_ready(workers, lambda: stopping):
            return 1
        http.close()  # the workers hold the ports now
        grpc_sock.close()
        ports = [json.loads(w.ready.read_text()) for w in workers]
        log.info("router_workers_ready", workers=len(workers), http=f"{s.http_host}:{http_port}",
                 kserve_grpc=grpc_port, metrics=[p.get("metrics") for p in ports])
        if s.ready_file:
            _write_ready(Path(s.ready_file), {
                "http_port": http_port, "grpc_port": grpc_port,
                "metrics_port": ports[0]["metrics_port"],
                "metrics_ports": [p["metrics_port"] for p in ports],
                "metrics": ports[0].get("metrics"),
                "metrics_addresses": [p.get("metrics") for p in ports],
                "workers": len(workers), "pids": [w.proc.pid for w in workers if w.proc]})
        while not stopping:
            time.sleep(0.2)
            for w in workers:
                if not stopping and not w.alive():
                    code = w.proc.returncode if w.proc else None
                    log.warning("router_worker_died", worker=w.index, code=code)
                    time.sleep(RESTART_DELAY_S)
                    w.start()
        return 0
    finally:
        _stop_all(workers)
        for f in tmp.iterdir():
            f.unlink(missing_ok=True)
        tmp.rmdir()


def _wait_ready(workers: list[_Worker], stopping: object) -> bool:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if callable(stopping) and stopping():
            return False
        if any(not w.alive() for w in workers):
            log.error("router_worker_failed_to_start",
                      workers=[w.index for w in workers if not w.alive()])
            return False
        if all(w.ready.exists() for w in workers):
            return True
        time.sleep(0.05)
    log.error("router_workers_not_ready", timeout_s=READY_TIMEOUT_S)
    return False


def _stop_all(workers: list[_Worker]) -> None:
    for w in workers:
        if w.alive() and w.proc is not None:
            w.proc.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + STOP_GRACE_S
    for w in workers:
        if w.proc is None:
            continue
        try:
            w.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            w.proc.kill()
            w.proc.wait()


def _write_ready(path: Path, data: dict[str, object]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data))
    os.replace(tmp, path)
