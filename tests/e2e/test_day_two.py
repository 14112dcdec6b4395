"""Day two against a real control plane, router, nats-server and sim/python replicas: a replica
that cannot start shows FAILED with its first error line and stops looping; a deploy that no
cluster can take says so in its answer; `PUT` applies every field and rolls replicas one at a
time with no request lost; delete and deactivate leave no replica and no record behind."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from basalt import bus, subjects
from basalt_tools.natsserver import NatsServer
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, kill_runtimes, runtimes
from tests.router_process import RouterProcess

pytestmark = pytest.mark.integration

BROKEN_MODEL = '''
class Model:
    def __init__(self, **kwargs):
        pass

    def load(self):
        raise ValueError("weights file missing: /nowhere/w.bin")

    def predict(self, model_input):
        return model_input
'''


def _until(probe, timeout: float = 60.0, every: float = 0.2):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = probe()
        if last:
            return last
        time.sleep(every)
    raise AssertionError(f"condition not met in {timeout}s (last: {last!r})")


def _sim(dep_id: str, **kw: Any) -> dict[str, Any]:
    return {"id": dep_id, "engine": "sim", "replicas": 1, "engine_args": dict(FAST_SIM_ARGS), **kw}


async def _keys(nats_url: str, bucket: str) -> set[str]:
    nc = await bus.connect(nats_url, name="test-day-two")
    try:
        return set(await bus.kv_items(await bus.kv_bucket(nc, bucket)))
    finally:
        await nc.close()


def keys(nats_url: str, bucket: str) -> set[str]:
    return asyncio.run(_keys(nats_url, bucket))


@pytest.fixture
def mcm(nats_server: NatsServer, tmp_path: Path):  # type: ignore[no-untyped-def]
    proc = McmProcess(nats_server.url, tmp_path / "mcm", extra=[
        "--stop-replicas-on-exit", "--backoff-base", "0.2", "--max-start-failures", "3",
        "--replica-grace", "10"]).start()
    try:
        yield proc
    finally:
        # The nats-server is the session's: leave no deployment for the next test to start.
        with httpx.Client(base_url=proc.base_url, timeout=30) as api:
            for m in api.get("/v1/models").json()["models"]:
                if m["name"].startswith("d2-"):
                    api.delete(f"/v1/models/{m['name']}")
        proc.terminate()
        kill_runtimes(proc.owner)


def test_a_replica_that_cannot_start_is_failed_with_its_first_error_and_stops(
        mcm: McmProcess, tmp_path: Path) -> None:
    model = tmp_path / "broken"
    (model / "model").mkdir(parents=True)
    (model / "model" / "model.py").write_text(BROKEN_MODEL)
    with httpx.Client(base_url=mcm.base_url, timeout=30) as api:
        r = api.post("/v1/models/d2-broken/deployments", json={
            "id": "d2-broken-v1", "engine": "python", "model_path": str(model), "replicas": 1,
            "engine_args": {"heartbeat_interval": "0.5"}})
        assert r.status_code == 201, r.text
        path = "/v1/models/d2-broken/deployments/d2-broken-v1"
        health = _until(lambda: (h := api.get(path).json()["health"])["state"] == "failed" and h,
                        timeout=120)
        assert health["failures"] == 3
        assert "ValueError: weights file missing: /nowhere/w.bin" in health["first_error"]
        assert "3 replicas in a row failed to start" in health["reason"]
        assert "RuntimeError: Event loop is closed" not in health["reason"]
        logs = sorted(mcm.state_dir.glob("d2-broken-v1-*.log"))
        assert len(logs) == 3
        time.sleep(3.0)  # the backoff would have launched again by now: it must not
        assert len(sorted(mcm.state_dir.glob("d2-broken-v1-*.log"))) == 3, "it stopped looping"
        assert not runtimes(mcm.owner)
        # The model list shows it too (what `basalt status` reads).
        listed = api.get("/v1/models").json()["models"][0]["deployments"][0]
        assert listed["health"]["state"] == "failed"
        # activate asks again: the failures are forgotten and a replica is launched.
        assert api.post(path + "/activate").status_code == 200
        _until(lambda: len(sorted(mcm.state_dir.glob("d2-broken-v1-*.log"))) > 3, timeout=30)


def test_a_deploy_no_cluster_can_take_says_why_in_its_answer(mcm: McmProcess) -> None:
    with httpx.Client(base_url=mcm.base_url, timeout=30) as api:
        t0 = time.monotonic()
        r = api.post("/v1/models/d2-big/deployments", json=_sim("d2-big-v1", accelerator_count=5))
        assert r.status_code == 201, r.text
        assert time.monotonic() - t0 < 5.0
        health = r.json()["health"]
        assert health["state"] == "unplaced", health
        assert "capacity 0/4 used, needs 5" in health["reason"] and "local" in health["reason"]


def test_put_applies_every_field_and_rolls_replicas_without_losing_a_request(
        mcm: McmProcess, nats_server: NatsServer, tmp_path: Path) -> None:
    router = RouterProcess(nats_server.url, tmp_path, name="router-day-two").start()
    api = httpx.Client(base_url=mcm.base_url, timeout=30)
    path = "/v1/models/d2-chat/deployments/d2-chat-v1"
    try:
        body = _sim("d2-chat-v1")
        r = api.put(path, json=body)
        assert r.status_code == 201 and r.json()["created"], r.text
        _until(lambda: api.get(path).json()["active_replica_count"] == 1)

        # Fields the router, the autoscaler and placement read: no new replicas.
        changed = {**body, "routing_policy": "round_robin", "queue_limit": 7,
                   "queue_timeout_s": 12.5, "request_backpressure_policy": "reject_on_full",
                   "parked_limit": 3, "preferred_regions": ["local"],
                   "autoscaling": {"min_replica": 1, "max_replica": 2}}
        r = api.put(path, json=changed)
        assert r.status_code == 200, r.text
        out = r.json()
        fields = {c["field"] for c in out["changes"]}
        assert {"routing_policy", "queue_limit", "queue_timeout_s", "request_backpressure_policy",
                "parked_limit", "preferred_regions", "autoscaling.max_replica",
                "autoscaling.min_replica"} <= fields, fields
        assert out["rollout"] is False and not any(c["needs_new_replicas"] for c in out["changes"])
        spec = api.get(path).json()["spec"]
        assert (spec["routing_policy"], spec["queue_limit"], spec["parked_limit"]) == (
            "round_robin", 7, 3)
        assert api.put(path, json=changed).json()["changes"] == [], "the same body: no change"
        first = api.get(path).json()
        old_ids = {x["id"] for x in first["replicas"]}

        # An engine setting: a new revision, rolled while requests keep coming.
        results: list[int] = []
        stop = threading.Event()

        def load() -> None:
            with httpx.Client(timeout=30) as c:
                while not stop.is_set():
                    resp = c.post(router.base_url + "/v1/completions", json={
                        "model": "d2-chat", "prompt": "hello there", "max_tokens": 4})
                    results.append(resp.status_code)

        workers = [threading.Thread(target=load) for _ in range(2)]
        for w in workers:
            w.start()
        try:
            _until(lambda: len(results) >= 5)
            rolled = {**changed, "engine_args": {**FAST_SIM_ARGS, "sim_seed": "7"}}
            r = api.put(path, json=rolled)
            assert r.status_code == 200 and r.json()["rollout"] is True, r.text
            assert any(c["field"] == "engine_args.sim_seed" for c in r.json()["changes"])
            revision = r.json()["spec_revision"]
            assert revision != first["spec_revision"]

            def rolled_out() -> bool:
                d = api.get(path).json()
                reps = d["replicas"]
                return (len(reps) == 1 and reps[0]["state"] == "ready"
                        and reps[0]["spec_revision"] == revision
                        and reps[0]["id"] not in old_ids and d["health"]["state"] == "ok")

            _until(rolled_out, timeout=90)
            before = len(results)
            _until(lambda: len(results) >= before + 5)
        finally:
            stop.set()
            for w in workers:
                w.join()
        assert results and all(code == 200 for code in results), (
            f"{sum(c != 200 for c in results)} of {len(results)} failed: {set(results)}")
    finally:
        api.close()
        router.kill()


def test_delete_and_deactivate_leave_no_replica_and_no_record(
        mcm: McmProcess, nats_server: NatsServer) -> None:
    with httpx.Client(base_url=mcm.base_url, timeout=30) as api:
        for dep in ("d2-keep-v1", "d2-gone-v1"):
            model = dep.removesuffix("-v1")
            assert api.post(f"/v1/models/{model}/deployments", json=_sim(dep)).status_code == 201
            _until(lambda d=dep, m=model: api.get(
                f"/v1/models/{m}/deployments/{d}").json()["active_replica_count"] == 1)
        assert api.post("/v1/models/d2-gone/deployments/d2-gone-v1/scale",
                        json={"replicas": 1}).status_code == 200
        assert "d2-gone-v1" in keys(nats_server.url, subjects.SCALE_APPLIED_BUCKET)

        r = api.post("/v1/models/d2-keep/deployments/d2-keep-v1/deactivate")
        assert r.status_code == 200 and r.json()["health"]["state"] == "inactive"
        r = api.delete("/v1/models/d2-gone")
        assert r.status_code == 200 and r.json()["deployments"] == ["d2-gone-v1"]

        def clean() -> bool:  # (the nats-server is the session's: other tests' keys are there)
            replicas = {k for k in keys(nats_server.url, subjects.REPLICAS_BUCKET)
                        if k.startswith(("d2-keep-v1-", "d2-gone-v1-"))}
            return not runtimes(mcm.owner) and not replicas
        _until(clean, timeout=60)
        left = keys(nats_server.url, subjects.DEPLOYMENTS_BUCKET)
        assert "d2-keep-v1" in left and "d2-gone-v1" not in left
        assert not {k for k in keys(nats_server.url, subjects.ENVIRONMENTS_BUCKET)
                    if k.startswith("d2-gone.")}
        assert "d2-gone-v1" not in keys(nats_server.url, subjects.SCALE_APPLIED_BUCKET)
        assert api.get("/v1/models/d2-gone").status_code == 404
        listed = {m["name"] for m in api.get("/v1/models").json()["models"]}
        assert "d2-keep" in listed and "d2-gone" not in listed


@pytest.mark.vllm
def test_a_deployment_the_engine_cannot_run_is_refused_at_deploy_time_with_its_field(
        mcm: McmProcess, tmp_path: Path, tiny_model: Path) -> None:
    (tmp_path / "empty").mkdir()
    cases = [
        ({"engine": "vllm", "model_path": str(tmp_path / "gone")}, "model_path", "not a folder"),
        ({"engine": "vllm", "model_path": str(tmp_path / "empty")}, "model_path",
         "no config.json"),
        ({"engine": "python", "model_path": str(tmp_path / "empty")}, "model_path",
         "no model/model.py"),
        ({"engine": "vllm", "model_path": str(tiny_model), "engine_args": {"max_lora_rankk": 16}},
         "engine_args.max_lora_rankk", "did you mean max_lora_rank"),
        ({"engine": "vllm", "model_path": str(tiny_model), "engine_args": {"max-lora-rank": "x"}},
         "engine_args.max_lora_rank", "invalid int value"),  # (keys are normalised)
        ({"engine": "sim", "engine_args": {"no_such_setting": 1}}, "engine_args.no_such_setting",
         "not a setting of the sim engine"),
    ]
    with httpx.Client(base_url=mcm.base_url, timeout=60) as api:
        for i, (fields, param, message) in enumerate(cases):
            r = api.put(f"/v1/models/d2-bad/deployments/d2-bad-{i}",
                        json={"id": f"d2-bad-{i}", **fields})
            assert r.status_code == 422, (fields, r.text)
            error = r.json()["error"]
            assert error["param"] == param and message in error["message"], (fields, error)
        assert api.get("/v1/models/d2-bad").status_code == 404, "nothing was written"
        # YAML-natural values pass: an int that is not quoted, a bool, a nested config.
        ok = {"id": "d2-good", "engine": "vllm", "model_path": str(tiny_model), "replicas": 0,
              "engine_args": {"max-model-len": 512, "enforce_eager": True, "max_lora_rank": 16}}
        r = api.put("/v1/models/d2-good/deployments/d2-good", json=ok)
        assert r.status_code == 201, r.text
    assert not runtimes(mcm.owner), "nothing started"
