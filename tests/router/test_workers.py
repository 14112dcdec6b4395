"""Router workers (`--workers N`): one port, N processes, each its own index from the same
KV events: real NATS, simulator replicas, HTTP over fresh connections."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from basalt_tools.natsserver import NatsServer
from services.router.workers import child_argv
from tests.router_process import RouterProcess, write_deployments
from tests.runtime_process import RuntimeProcess


def test_child_argv_replaces_the_per_worker_flags() -> None:
    argv = ["--nats-url", "nats://x", "--http-port", "8000", "--workers=4", "--ready-file",
            "/r.json", "--region", "us"]
    out = child_argv(argv, {"--http-port": "9000", "--worker-index": "1"})
    assert out == ["--nats-url", "nats://x", "--region", "us", "--http-port", "9000",
                   "--worker-index", "1"]


def _consecutive_free_ports(n: int) -> int:
    """A port p such that p .. p+n-1 are free now (for the workers' metrics: base + index)."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            base = probe.getsockname()[1]
        if base + n > 65535:
            continue
        held = []
        try:
            for port in range(base, base + n):
                sock = socket.socket()
                held.append(sock)
                sock.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for sock in held:
                sock.close()
    raise RuntimeError(f"no {n} consecutive free ports")


@pytest.mark.integration
def test_every_worker_routes_a_repeated_prefix_to_its_holder(
        nats_server: NatsServer, tmp_path: Path) -> None:
    deps = write_deployments(tmp_path / "deployments.yaml", [
        {"id": "chat-v1", "model": "chat", "engine": "sim"}])
    replicas = [RuntimeProcess(nats_server.url, tmp_path, replica_id=rid, extra=[
        "--deployment", "chat-v1", "--sim-time-scale", "0.05", "--max-model-len", "8192",
        "--load-report-interval", "0.2", "--heartbeat-interval", "1"]) for rid in ("w-a", "w-b")]
    metrics_base = _consecutive_free_ports(2)
    router = RouterProcess(nats_server.url, tmp_path, deps,
                           extra=["--workers", "2", "--metrics-port", str(metrics_base)])
    try:
        for r in replicas:
            r.launch()
        for r in replicas:
            r.wait_ready(90)
        router.start(timeout=60)
        prefix = "the shared system prompt of this test, long enough for many blocks. " * 20
        url = router.base_url + "/v1/completions"

        def ask(suffix: str) -> httpx.Response:
            # No client kept: each call is a new connection, which the kernel may give to
            # either worker.
            r = httpx.post(url, json={"model": "chat", "prompt": prefix + suffix,
                                      "max_tokens": 2}, timeout=10)
            assert r.status_code == 200, r.text
            return r

        deadline = time.monotonic() + 20
        while True:  # until both workers have seen the replicas
            try:
                first = ask("seed")
                break
            except (httpx.HTTPError, AssertionError):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        holder = first.headers["x-basalt-replica"]
        time.sleep(1.0)  # the holder's KV events reach both workers
        served = [ask(f"question {i}") for i in range(24)]
        assert {r.headers["x-basalt-replica"] for r in served} == {holder}
        workers = {r.headers["x-basalt-router-worker"] for r in served}
        assert workers == {"0", "1"}, f"one worker served all 24 connections: {workers}"
        # Each worker its own /metrics: the base port + its index.
        ready = json.loads((tmp_path / "router.ready.json").read_text())
        assert ready["metrics_ports"] == [metrics_base, metrics_base + 1]
        assert ready["metrics_addresses"] == [f"127.0.0.1:{metrics_base}",
                                              f"127.0.0.1:{metrics_base + 1}"]
        for address in ready["metrics_addresses"]:
            assert "basalt_router_requests" in httpx.get(f"http://{address}/metrics").text
    finally:
        router.kill()
        for r in replicas:
            r.kill()
