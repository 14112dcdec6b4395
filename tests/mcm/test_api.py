"""The deployments API over a real NATS KV: what a client sees, and what it leaves in the store."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from basalt import apikeys, bus, subjects
from basalt.pb import deploy_pb2, events_pb2
from services.mcm.api import create_app
from services.mcm.scale import ScaleConsumer
from services.mcm.store import Store
from services.router.core.deployments import DeploymentTable
from tests.mcm_process import eventually

pytestmark = pytest.mark.integration
MODEL = "org/tiny"
BASE = f"/v1/models/{MODEL}"
BUCKETS = (subjects.DEPLOYMENTS_BUCKET, subjects.ENVIRONMENTS_BUCKET, subjects.REPLICAS_BUCKET)


@pytest.fixture
async def store(nc: Client) -> Store:
    """A Store over emptied buckets: each test starts from no deployments."""
    js = nc.jetstream()
    for name in BUCKETS:
        try:
            await js.delete_key_value(name)
        except NotFoundError:
            pass
    return await Store.open(nc)


def _client(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mcm")


@pytest.fixture
async def scale_consumer(store: Store, nc: Client) -> AsyncIterator[ScaleConsumer]:
    """The scale stream's consumer, running as mcm runs it: POST .../scale publishes a
    ScaleCommand and answers once this applied it."""
    consumer = await ScaleConsumer.open(nc, store)
    task = asyncio.create_task(consumer.run())
    yield consumer
    consumer.request_stop()
    await task


@pytest.fixture
async def api(store: Store, nc: Client,
              scale_consumer: ScaleConsumer) -> AsyncIterator[httpx.AsyncClient]:
    async with _client(create_app(store, nc=nc)) as client:
        yield client


async def _deploy(api: httpx.AsyncClient, dep_id: str, model: str = MODEL, **kw) -> dict:
    r = await api.post(
        f"/v1/models/{model}/deployments", json={"id": dep_id, "engine": "sim", **kw}
    )
    assert r.status_code == 201, r.text
    return r.json()


async def _snapshot(store: Store) -> tuple:
    """Every record with its KV revision: equal snapshots mean nothing was written."""
    deps = {d.id: await store.get(d.id) for d in await store.list()}
    return (
        {k: (v.revision, v.record.SerializeToString()) for k, v in deps.items() if v},
        [e.SerializeToString() for e in await store.list_environments()],
    )


async def _resolves(store: Store, *names: str) -> list[str | None]:
    """The deployment the router will send each name to, given the store's records."""
    table = DeploymentTable()
    for rec in await store.list():
        table.put_deployment(rec)
    for env in await store.list_environments():
        table.put_environment(env)
    return [r.deployment_id if (r := table.resolve(n)) else None for n in names]


async def _rec(store: Store, deployment_id: str) -> deploy_pb2.DeploymentRecord:
    found = await store.get(deployment_id)
    assert found is not None, deployment_id
    return found.record


def _error(r: httpx.Response, status: int) -> dict:
    assert r.status_code == status, r.text
    return r.json()["error"]


async def test_create_get_list(api: httpx.AsyncClient, store: Store) -> None:
    created = await _deploy(api, "tiny-v1", engine_args={"max_model_len": "1024"})
    assert created["status"] == "active" and created["environments"] == ["production"]
    got = (await api.get(f"{BASE}/deployments/tiny-v1")).json()
    assert got["spec"]["engine_args"] == {"max_model_len": 1024}, "shown as its value"
    assert got["desired_replicas"] == 1 and got["replicas"] == []
    listed = (await api.get(f"{BASE}/deployments")).json()["deployments"]
    assert [d["id"] for d in listed] == ["tiny-v1"]
    models = (await api.get("/v1/models")).json()["models"]
    assert [(m["name"], m["production_deployment_id"]) for m in models] == [(MODEL, "tiny-v1")]
    assert (await api.get(BASE)).json()["environments"] == [
        {"name": "production", "model": MODEL, "deployment_id": "tiny-v1"}
    ]
    assert await _resolves(store, MODEL) == ["tiny-v1"]


async def test_autoscaling_defaults_are_basetens(api: httpx.AsyncClient, store: Store) -> None:
    await _deploy(api, "d1", autoscaling={})
    a = (await _rec(store, "d1")).spec.autoscaling
    assert (
        a.min_replica,
        a.max_replica,
        a.autoscaling_window,
        a.scale_down_delay,
        a.concurrency_target,
        a.target_utilization_percentage,
    ) == (0, 1, 60, 900, 1, 70)


BAD_REQUESTS = [
    ("post", "/deployments", {"id": "d2", "engine": "sim", "replicaz": 2}, 422, "replicaz"),
    ("post", "/deployments", {"id": "d2", "model": "x"}, 422, "model"),
    (
        "post",
        "/deployments",
        {"id": "d2", "autoscaling": {"max_replica": 1001}},
        422,
        "autoscaling.max_replica",
    ),
    (
        "post",
        "/deployments",
        {"id": "d2", "autoscaling": {"min_replica": 2}},
        422,
        "autoscaling.min_replica",
    ),
    ("post", "/deployments", {"id": "d1"}, 409, None),
    (
        "patch",
        "/deployments/d1/autoscaling_settings",
        {"concurrency_target": 0},
        422,
        "concurrency_target",
    ),
    ("patch", "/deployments/d1/autoscaling_settings", {"min_replica": 3}, 422, "min_replica"),
    ("patch", "/deployments/d1/autoscaling_settings", {"max_replicas": 3}, 422, "max_replicas"),
    ("post", "/deployments/d1/scale", {"replicas": 1001}, 422, "replicas"),
    ("post", "/deployments/d1/scale", {"replicas": -1}, 422, "replicas"),
    ("post", "/deployments/nope/scale", {"replicas": 2}, 404, None),
    ("post", "/deployments/off/scale", {"replicas": 2}, 409, None),
    ("post", "/deployments/off/promote", None, 409, None),
    ("post", "/deployments/nope/promote", None, 404, None),
    ("post", "/environments/production/promote", {"deployment_id": "nope"}, 404, None),
    ("post", "/environments/staging/promote", {"deployment_id": "d1"}, 404, None),
    ("post", "/environments", {"name": "production", "deployment_id": "d1"}, 409, None),
    ("post", "/environments", {"name": "staging", "deployment_id": "nope"}, 404, None),
    ("delete", "/deployments/d1", None, 409, None),
]


@pytest.mark.parametrize(("method", "path", "body", "status", "param"), BAD_REQUESTS)
async def test_bad_requests_change_nothing(
    api: httpx.AsyncClient,
    store: Store,
    method: str,
    path: str,
    body: dict | None,
    status: int,
    param: str | None,
) -> None:
    await _deploy(api, "d1")
    await _deploy(api, "off", active=False)
    before = await _snapshot(store)
    r = await api.request(method, BASE + path, json=body)
    err = _error(r, status)
    assert err["message"] and err["type"]
    if param:
        assert err["param"] == param and param in err["message"]
    assert await _snapshot(store) == before


async def test_unknown_things_are_404(api: httpx.AsyncClient) -> None:
    assert _error(await api.get("/v1/models/nope"), 404)["code"] == "model_not_found"
    assert _error(await api.get("/v1/models/nope/deployments"), 404)["code"] == "model_not_found"
    await _deploy(api, "d1")
    await _deploy(api, "e1", model="other")
    # A deployment of another model is not found under this one.
    assert _error(await api.get(f"{BASE}/deployments/e1"), 404)["code"] == "deployment_not_found"
    env = await api.get(f"{BASE}/environments/staging")
    assert _error(env, 404)["code"] == "environment_not_found"
    assert _error(await api.get("/v2/whatever"), 404)["code"] == "route_not_found"


async def test_promote_switches_production_and_scales_old_down(
    api: httpx.AsyncClient,
    store: Store,
) -> None:
    await _deploy(api, "v1", autoscaling={"max_replica": 4})
    await api.post(f"{BASE}/deployments/v1/scale", json={"replicas": 3})
    await _deploy(api, "v2", replicas=0)
    assert await _resolves(store, MODEL) == ["v1"]  # v2 is not production yet

    r = await api.post(f"{BASE}/deployments/v2/promote")
    assert r.status_code == 200, r.text
    out = r.json()
    assert out["environment"] == {"name": "production", "model": MODEL, "deployment_id": "v2"}
    assert (out["previous_deployment_id"], out["scaled_down_deployment_id"]) == ("v1", "v1")
    prod = await store.get_environment(MODEL, "production")
    assert prod is not None and prod.deployment_id == "v2"
    old, new = await _rec(store, "v1"), await _rec(store, "v2")
    assert (old.desired_replicas, new.desired_replicas) == (0, 1)
    assert await _resolves(store, MODEL, f"{MODEL}@production", "v1") == ["v2", "v2", "v1"]


async def test_promote_development_publishes_it_and_spares_other_environments(
    api: httpx.AsyncClient,
    store: Store,
) -> None:
    await _deploy(api, "v1")
    assert (
        await api.post(f"{BASE}/environments", json={"name": "staging", "deployment_id": "v1"})
    ).status_code == 201
    await _deploy(api, "dev", kind="development")
    assert (await api.get(BASE)).json()["development_deployment_id"] == "dev"
    r = await api.post(f"{BASE}/environments/production/promote", json={"deployment_id": "dev"})
    assert r.status_code == 200, r.text
    assert r.json()["scaled_down_deployment_id"] is None  # staging still serves v1
    assert (await _rec(store, "v1")).desired_replicas == 1
    assert r.json()["deployment"]["kind"] == "published"
    assert await _resolves(store, MODEL, f"{MODEL}@staging") == ["dev", "v1"]
    # Published now, so a new development deployment is allowed.
    await _deploy(api, "dev2", kind="development")


async def test_one_development_deployment_per_model(api: httpx.AsyncClient) -> None:
    await _deploy(api, "dev", kind="development")
    r = await api.post(f"{BASE}/deployments", json={"id": "dev2", "kind": "development"})
    assert _error(r, 409)["code"] == "development_deployment_exists"
    r = await api.post("/v1/models/other/deployments", json={"id": "dev"})
    assert _error(r, 409)["code"] == "deployment_exists"  # ids are global
    # A development deployment does not become production by itself.
    assert (await api.get(BASE)).json()["production_deployment_id"] is None


async def test_activate_deactivate(api: httpx.AsyncClient, store: Store) -> None:
    await _deploy(api, "d1", autoscaling={"min_replica": 2, "max_replica": 2})
    off = (await api.post(f"{BASE}/deployments/d1/deactivate")).json()
    assert (off["status"], off["desired_replicas"]) == ("inactive", 0)
    assert await _resolves(store, MODEL) == [None]
    on = (await api.post(f"{BASE}/deployments/d1/activate")).json()
    assert (on["status"], on["desired_replicas"]) == ("active", 2)
    assert await _resolves(store, MODEL) == ["d1"]


async def test_delete_refused_while_an_environment_points_at_it(
    api: httpx.AsyncClient,
    store: Store,
) -> None:
    await _deploy(api, "v1")
    await _deploy(api, "v2")
    err = _error(await api.delete(f"{BASE}/deployments/v1"), 409)
    assert err["code"] == "deployment_in_environment" and "production" in err["message"]
    assert await store.get("v1") is not None
    await api.post(f"{BASE}/deployments/v2/promote")
    assert (await api.delete(f"{BASE}/deployments/v1")).json()["deleted"] is True
    assert await store.get("v1") is None
    assert (await api.get(f"{BASE}/deployments/v1")).status_code == 404


async def test_delete_model_removes_deployments_and_environments(
    api: httpx.AsyncClient,
    store: Store,
) -> None:
    await _deploy(api, "v1")
    await _deploy(api, "keep", model="other")
    out = (await api.delete(BASE)).json()
    assert (out["deployments"], out["environments"]) == (["v1"], ["production"])
    assert [d.id for d in await store.list()] == ["keep"]
    assert [e.model for e in await store.list_environments()] == ["other"]
    assert (await api.get(BASE)).status_code == 404


async def test_patch_autoscaling_is_partial(api: httpx.AsyncClient, store: Store) -> None:
    await _deploy(api, "d1")
    r = await api.patch(
        f"{BASE}/deployments/d1/autoscaling_settings", json={"max_replica": 3, "min_replica": 2}
    )
    assert r.json()["autoscaling_settings"]["scale_down_delay"] == 900
    rec = await _rec(store, "d1")
    assert (rec.spec.autoscaling.min_replica, rec.spec.autoscaling.max_replica) == (2, 3)
    assert rec.desired_replicas == 2  # raised to the new minimum


@pytest.mark.parametrize("racers", [2, 4])
async def test_racing_scales_lose_no_write(store: Store, nc: Client, racers: int,
                                           scale_consumer: ScaleConsumer) -> None:
    """Each racer is its own API process (own app, own Store): only compare-and-set guards."""
    clients = [_client(create_app(await Store.open(nc), nc=nc)) for _ in range(racers)]
    await _deploy(clients[0], "d1", autoscaling={"max_replica": 100})
    before = (await _rec(store, "d1")).generation
    values = [10 + i for i in range(racers)]
    answers = await asyncio.gather(
        *(
            c.post(f"{BASE}/deployments/d1/scale", json={"replicas": v})
            for c, v in zip(clients, values)
        )
    )
    assert [a.status_code for a in answers] == [200] * racers
    rec = await _rec(store, "d1")
    assert rec.desired_replicas in values
    assert rec.generation == before + racers
    for c in clients:
        await c.aclose()


async def test_detail_shows_replicas(api: httpx.AsyncClient, nc: Client) -> None:
    await _deploy(api, "d1")
    kv = await bus.replicas_bucket(nc)
    for rid, dep, state in [
        ("r1", "d1", events_pb2.REPLICA_STATE_READY),
        ("r2", "d1", events_pb2.REPLICA_STATE_LOADING),
        ("r3", "d9", events_pb2.REPLICA_STATE_READY),
    ]:
        rec = events_pb2.ReplicaRecord(
            replica_id=rid,
            deployment=dep,
            state=state,
            region="us-east",
            zone="us-east-1a",
            cluster="c1",
            grpc_address=f"10.0.0.1:{rid[1]}",
        )
        await kv.put(rid, rec.SerializeToString())
    got = (await api.get(f"{BASE}/deployments/d1")).json()
    assert [(x["id"], x["state"], x["grpc_address"]) for x in got["replicas"]] == [
        ("r1", "ready", "10.0.0.1:1"),
        ("r2", "loading", "10.0.0.1:2"),
    ]
    assert got["replicas"][0]["zone"] == "us-east-1a" and got["active_replica_count"] == 1


async def test_clusters_and_health(store: Store, nc: Client) -> None:
    async with _client(create_app(store, nc=nc)) as api:
        assert (await api.get("/v1/clusters")).json() == {"clusters": []}
    status = [{"name": "c1", "region": "us-east", "up": True}]
    async with _client(create_app(store, nc=nc, cluster_status=lambda: status)) as api:
        assert (await api.get("/v1/clusters")).json() == {"clusters": status}
        assert (await api.get("/health")).json() == {"status": "ok"}


async def test_auth(store: Store, nc: Client) -> None:
    verifier = apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET))
    key = await apikeys.create(nc, "test-mcm", apikeys.MANAGEMENT)
    async with _client(create_app(store, nc=nc, verifier=verifier)) as api:
        assert (await api.get("/health")).status_code == 200
        assert _error(await api.get("/v1/models"), 401)["code"] == "invalid_api_key"
        r = await api.post(f"{BASE}/deployments", json={"id": "d1"})
        assert _error(r, 401)["type"] == "authentication_error"
        assert await store.list() == []  # refused before any work
        bad = {"Authorization": f"Bearer {key}x"}
        assert (await api.get("/v1/models", headers=bad)).status_code == 401
        for header in (f"Bearer {key}", f"Api-Key {key}"):
            assert (
                await api.get("/v1/models", headers={"Authorization": header})
            ).status_code == 200
        r = await api.post(
            f"{BASE}/deployments", json={"id": "d1"}, headers={"Authorization": f"Api-Key {key}"}
        )
        assert r.status_code == 201


async def test_scale_travels_as_a_scale_command_on_the_stream(
        api: httpx.AsyncClient, store: Store, nc: Client) -> None:
    await _deploy(api, "d1", autoscaling={"max_replica": 10})
    r = await api.post(f"{BASE}/deployments/d1/scale", json={"replicas": 4})
    assert r.status_code == 200, r.text
    assert (await _rec(store, "d1")).desired_replicas == 4
    last = await nc.jetstream().get_last_msg(subjects.SCALE_STREAM, subjects.scale("d1"))
    cmd = deploy_pb2.ScaleCommand.FromString(last.data)
    assert (cmd.deployment_id, cmd.replicas, cmd.source) == ("d1", 4, "api")
    await store.delete("d1")  # a control plane in a later test would start its replicas


async def test_scale_with_no_consumer_answers_503_and_is_applied_when_one_runs(
        store: Store, nc: Client, monkeypatch: pytest.MonkeyPatch) -> None:
    from services.mcm import api as api_module

    monkeypatch.setattr(api_module, "SCALE_WAIT_S", 0.5)
    async with _client(create_app(store, nc=nc)) as api:
        await _deploy(api, "d1", autoscaling={"max_replica": 10})
        r = await api.post(f"{BASE}/deployments/d1/scale", json={"replicas": 5})
    assert _error(r, 503)["code"] == "scale_not_applied"
    assert (await _rec(store, "d1")).desired_replicas == 1, "nothing applied yet"
    consumer = await ScaleConsumer.open(nc, store)
    task = asyncio.create_task(consumer.run())
    try:
        async def applied() -> bool:
            return (await _rec(store, "d1")).desired_replicas == 5
        await eventually(applied, 10.0, "the queued command applied")
    finally:
        consumer.request_stop()
        await task
        await store.delete("d1")  # a control plane in a later test would start its replicas


class BrokenStore(Store):
    """A store whose listing fails with an internal detail in its text."""

    async def list(self) -> list[deploy_pb2.DeploymentRecord]:
        raise RuntimeError("db password is hunter2")


async def test_an_unexpected_failure_is_a_500_that_echoes_no_internal_text(
        store: Store, nc: Client) -> None:
    broken = BrokenStore(store.deployments, store.environments)
    # As a server runs it: the app's exception is answered, not raised into the client.
    transport = httpx.ASGITransport(app=create_app(broken, nc=nc), raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://mcm") as api:
        r = await api.get("/v1/models")
    err = _error(r, 500)
    assert "hunter2" not in r.text and "RuntimeError" not in r.text
    assert "error id" in err["message"]
