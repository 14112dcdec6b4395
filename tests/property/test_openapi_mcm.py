"""Schemathesis over the control plane's OpenAPI schema (the deployments API): every
operation, with a valid API key, with none and with a bad one, in positive and negative
generation; the app is served in-process over ASGI on a real NATS KV store, with the scale
consumer running as mcm runs it and the key verifier on the real API-keys bucket.

The properties: no answer is a 5xx, and every 4xx carries the API's error shape (the
router's: {"error": {"message", "type", "param", "code"}}). Path parameters are steered now
and then to a model and deployments that exist (re-created before each example when a
previous one deleted them), so operations reach their rules, not only their 404s.
"""

from __future__ import annotations

import asyncio
import string
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import event, given
from hypothesis import strategies as st
from nats.aio.client import Client
from nats.js.errors import NotFoundError
from schemathesis import GenerationMode

from basalt import apikeys, bus, subjects
from basalt.pb import deploy_pb2
from services.mcm.api import create_app
from services.mcm.scale import ScaleConsumer
from services.mcm.store import Store
from tests.property.support import (
    FUZZ,
    FUZZ_NO_KEY,
    bad_auth,
    error_of,
    good_auth,
    request_kwargs,
)

pytestmark = pytest.mark.integration
MODEL = "org/tiny"
SEEDED = ("tiny-v1", "tiny-v2")
# What path parameters are steered to now and then.
STEER = {
    "model": (MODEL, "org/other", "deployments", "a..b", "org/tiny/deployments"),
    "deployment_id": (*SEEDED, "nope", "tiny.v1", "tiny v1", "*", ">"),
    "name": ("production", "staging", "a.b", "*"),
}


RAW_SCHEMA = create_app(Store(None, None), nc=None).openapi()  # type: ignore[arg-type]
SCHEMA = schemathesis.openapi.from_dict(RAW_SCHEMA)
OPERATIONS = [(path, method.upper(), "requestBody" in spec)
              for path, methods in RAW_SCHEMA["paths"].items()
              for method, spec in methods.items()]
# Every parameter is a string path segment: only a body can be broken by negative generation.
CASES = [pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
         for path, method, has_body in OPERATIONS
         for mode in GenerationMode if has_body or mode.is_positive]
_STRATEGIES: dict[tuple[str, str, GenerationMode], Any] = {}


def _strategy(path: str, method: str, mode: GenerationMode) -> Any:
    key = (path, method, mode)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = SCHEMA[path][method].as_strategy(mode)
    return _STRATEGIES[key]


@dataclass(slots=True)
class Api:
    client: httpx.AsyncClient
    key: str
    other_scope_key: str  # valid, but an inference key: refused here
    store: Store


def _seed_record(dep_id: str) -> deploy_pb2.DeploymentRecord:
    return deploy_pb2.DeploymentRecord(
        id=dep_id, model=MODEL, status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE, desired_replicas=1,
        kind="published", created_ts=time.time(), spec=deploy_pb2.DeploymentSpec(engine="sim"))


async def _reseed(store: Store) -> None:
    """The seeded deployments and the production environment, as they were (cheap when
    nothing changed: two reads)."""
    for dep_id in SEEDED:
        found = await store.get(dep_id)
        if found is None or found.record.model != MODEL:
            if found is not None:
                await store.delete(dep_id)
            try:
                await store.create(_seed_record(dep_id))
            except Exception:  # noqa: BLE001 - deleted keys are re-created with a put
                await store.deployments.put(dep_id, _seed_record(dep_id).SerializeToString())
        elif found.record.status != deploy_pb2.DEPLOYMENT_STATUS_ACTIVE:
            rec = found.record
            rec.status = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
            await store.update(rec, found.revision)
    if await store.get_environment(MODEL, "production") is None:
        await store.put_environment(deploy_pb2.EnvironmentRecord(
            model=MODEL, name="production", deployment_id=SEEDED[0]))


@pytest.fixture(scope="module")
async def api(module_nc: Client) -> AsyncIterator[Api]:
    nc = module_nc
    js = nc.jetstream()
    for name in (subjects.DEPLOYMENTS_BUCKET, subjects.ENVIRONMENTS_BUCKET):
        try:
            await js.delete_key_value(name)
        except NotFoundError:
            pass
    store = await Store.open(nc)
    await _reseed(store)
    consumer = await ScaleConsumer.open(nc, store)
    task = asyncio.create_task(consumer.run())
    verifier = apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET))
    key = await apikeys.create(nc, "property-mcm", apikeys.MANAGEMENT)
    inference_key = await apikeys.create(nc, "property-mcm-inference", apikeys.INFERENCE)
    app = create_app(store, nc=nc, verifier=verifier)
    # raise_app_exceptions=False: an exception out of the app is the 500 a client sees.
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://mcm",
                                     timeout=60) as client:
            yield Api(client, key, inference_key, store)
    finally:
        consumer.request_stop()
        await task


def _steer(case: Any, data: st.DataObject) -> None:
    params = case.path_parameters or {}
    if "model" in params and data.draw(st.booleans(), label="aim at a seeded deployment"):
        params["model"] = MODEL  # model and id together: the operation reaches its rules
        if "deployment_id" in params:
            params["deployment_id"] = data.draw(st.sampled_from(SEEDED), label="seeded id")
        return
    for name, choices in STEER.items():
        if name in (case.path_parameters or {}) and data.draw(st.booleans(), label=f"steer {name}"):
            case.path_parameters[name] = data.draw(st.sampled_from(choices), label=name)
    body = case.body
    if isinstance(body, dict) and "deployment_id" in body and data.draw(st.booleans()):
        body["deployment_id"] = data.draw(st.sampled_from(STEER["deployment_id"]))


def _what(case: Any, headers: dict[str, str]) -> str:
    kw = case.as_transport_kwargs(base_url="http://mcm")
    body = kw.get("json", kw.get("data"))
    return f"{kw['method']} {kw['url']} headers={headers} body={body!r:.400}"


async def _send(api: Api, case: Any, headers: dict[str, str]) -> httpx.Response:
    kwargs = request_kwargs(case.as_transport_kwargs(base_url="http://mcm"))
    kwargs["headers"] = {**kwargs["headers"], **headers}
    r = await api.client.request(**kwargs)
    event(f"status {r.status_code}")  # --hypothesis-show-statistics: what the cases reached
    return r




def _check(r: httpx.Response, what: str, case: Any) -> None:
    assert r.status_code < 500, f"{what} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        error_of(r)


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
@FUZZ
@given(data=st.data())
async def test_every_operation_with_a_key(api: Api, path: str, method: str,
                                          mode: GenerationMode, data: st.DataObject) -> None:
    await _reseed(api.store)
    case = data.draw(_strategy(path, method, mode), label="case")
    _steer(case, data)
    headers = data.draw(good_auth(api.key), label="auth")
    r = await _send(api, case, headers)
    _check(r, _what(case, headers), case)


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
@FUZZ_NO_KEY
@given(data=st.data())
async def test_every_operation_without_a_valid_key(
    api: Api, path: str, method: str, mode: GenerationMode, data: st.DataObject,
) -> None:
    case = data.draw(_strategy(path, method, mode), label="case")
    _steer(case, data)
    headers = data.draw(bad_auth(api.key, api.other_scope_key), label="auth")
    r = await _send(api, case, headers)
    _check(r, _what(case, headers), case)
    if path == "/health":
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 401, _what(case, headers)
        assert error_of(r)["type"] == "authentication_error"


@FUZZ
@given(path=st.text(string.ascii_letters + string.digits + "/._-%", max_size=40),
       method=st.sampled_from(["GET", "POST", "PUT", "PATCH", "DELETE"]))
async def test_any_path_and_method_gets_the_error_shape(api: Api, path: str, method: str) -> None:
    """Routes and methods outside the schema: a 404 or 405 in the API's shape, never a 5xx."""
    r = await api.client.request(method, "/v1/" + path,
                                 headers={"Authorization": f"Bearer {api.key}"})
    assert r.status_code < 500, f"{method} /v1/{path} -> {r.status_code}: {r.text[:300]}"
    if r.status_code >= 400:
        error_of(r)


B = f"/v1/models/{MODEL}"
# The smallest inputs of a bug found and fixed (500 for an id no KV key can be), one per route it reaches ("a b": a space).
NOT_KV_KEYS = [
    ("GET", B + "/deployments/a%20b", None),
    ("DELETE", B + "/deployments/a%20b", None),
    ("POST", B + "/deployments/a%20b/activate", None),
    ("POST", B + "/deployments/a%20b/deactivate", None),
    ("PATCH", B + "/deployments/a%20b/autoscaling_settings", {}),
    ("POST", B + "/deployments/a%20b/scale", {"replicas": 1}),
    ("POST", B + "/deployments/a%20b/promote", None),
    ("GET", B + "/environments/a%20b", None),
    ("GET", "/v1/models/a%20b/environments/production", None),
    ("POST", B + "/environments", {"name": "staging", "deployment_id": "a b"}),
    ("POST", B + "/environments/production/promote", {"deployment_id": "a b"}),
]


@pytest.mark.parametrize(("method", "path", "body"), [
    pytest.param(*p, id=f"{p[0]} {p[1].removeprefix(B)} {p[2] or ''}") for p in NOT_KV_KEYS])
async def test_an_id_that_is_no_kv_key_is_a_4xx(api: Api, method: str, path: str,
                                                body: dict | None) -> None:
    r = await api.client.request(method, path, json=body,
                                 headers={"Authorization": f"Bearer {api.key}"})
    assert 400 <= r.status_code < 500, f"{method} {path} {body} -> {r.status_code}: {r.text}"
    error_of(r)
