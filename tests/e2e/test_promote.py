"""Control plane and router together: a deployment made through the API serves traffic, and
promote switches what the model name serves with no restart of anything."""

from __future__ import annotations

import time

import httpx
import pytest

from basalt_tools.natsserver import NatsServer
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, kill_runtimes
from tests.router_process import RouterProcess

pytestmark = pytest.mark.integration


def _served_by(router: RouterProcess, model: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(router.base_url + "/v1/completions", timeout=30,
                       json={"model": model, "prompt": "hello", "max_tokens": 2})
        if r.status_code == 200:
            return r.headers["x-basalt-replica"]
        if time.monotonic() > deadline:
            raise AssertionError(f"{r.status_code} {r.text}")
        time.sleep(0.3)


def _until(probe, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = probe()
        if found:
            return found
        time.sleep(0.3)
    raise AssertionError("condition not met in time")


def test_promote_switches_what_the_model_name_serves(nats_server: NatsServer, tmp_path) -> None:
    mcm = McmProcess(nats_server.url, tmp_path / "mcm", extra=["--stop-replicas-on-exit"]).start()
    router = RouterProcess(nats_server.url, tmp_path, name="router-promote").start()
    api = httpx.Client(base_url=mcm.base_url, timeout=30)
    try:
        def deploy(dep_id: str) -> None:
            r = api.post("/v1/models/chat/deployments", json={
                "id": dep_id, "engine": "sim", "replicas": 1, "engine_args": FAST_SIM_ARGS})
            assert r.status_code == 201, r.text

        deploy("chat-v1")
        assert api.get("/v1/models/chat").json()["production_deployment_id"] == "chat-v1"
        assert _served_by(router, "chat").startswith("chat-v1")
        deploy("chat-v2")
        _until(lambda: api.get("/v1/models/chat/deployments/chat-v2").json()["active_replica_count"])
        assert _served_by(router, "chat@production").startswith("chat-v1")
        r = api.post("/v1/models/chat/environments/production/promote", json={"deployment_id": "chat-v2"})
        assert r.status_code == 200, r.text
        _until(lambda: _served_by(router, "chat").startswith("chat-v2"), timeout=10)
        for _ in range(5):
            assert _served_by(router, "chat").startswith("chat-v2")
        old = _until(lambda: (d := api.get("/v1/models/chat/deployments/chat-v1").json())
                     ["replica_count"] == 0 and d)
        assert old["desired_replicas"] == 0
    finally:
        api.close()
        router.kill()
        mcm.terminate()
        kill_runtimes(mcm.owner)
