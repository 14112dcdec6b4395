"""Schemathesis over the router's OpenAPI schema: every operation, with a valid API key, with
none and with a bad one, in positive and negative generation; the app is served in-process
over ASGI with real parts (NATS watchers, dispatcher, key verifier on the real API-keys
bucket) and real replicas (a simulator LLM replica and a python `echo` replica).

The properties: no answer is a 5xx, and every 4xx carries the OpenAI error shape. Valid bodies
that name a served model reach a replica and get 200 (`test_valid_requests_are_served` shows
the stack serves, so "no 5xx" is not met by a door that refuses everything).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import schemathesis
from fastapi import FastAPI
from hypothesis import event, given
from hypothesis import strategies as st
from nats.aio.client import Client
from schemathesis import GenerationMode

from basalt import apikeys, bus, subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from services.router.core.deployments import DeploymentTable
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex
from services.router.core.types import PolicyConfig, RegionLatency
from services.router.dispatch import Channels, Dispatcher
from services.router.openai_api import AppState, create_app
from services.router.tokenizers import Tokenizers
from services.router.watchers import StateWatcher
from tests.property.support import (
    FUZZ,
    FUZZ_NO_KEY,
    bad_auth,
    error_of,
    good_auth,
    request_kwargs,
)
from tests.runtime_process import RuntimeProcess

pytestmark = pytest.mark.integration
ECHO_MODEL = Path(__file__).resolve().parents[1] / "runtime" / "models" / "echo"
# Names a generated body or path is steered to now and then, so valid requests reach a
# replica: the sim LLM, its deployment id, the python model, an unknown one.
MODEL_NAMES = ("chat", "chat-v1", "echo", "chat@production", "no-such-model")
# The echo model misbehaves on purpose when its input holds these keys (502 by design).
ECHO_TRAPS = frozenset({"sleep", "raise", "return_set"})


def _parts(table: DeploymentTable, fleet: Fleet, index: PrefixIndex, channels: Channels,
           publish: Any = None) -> Dispatcher:
    return Dispatcher(fleet, index, channels, region="local", latency=RegionLatency(),
                      base_policy=PolicyConfig(), publish=publish)


def _schema_app() -> FastAPI:
    """The app with empty parts: only its OpenAPI document is read (no I/O)."""
    dispatcher = _parts(DeploymentTable(), Fleet(), PrefixIndex(), Channels())
    return create_app(AppState(DeploymentTable(), dispatcher, Tokenizers(), None))


RAW_SCHEMA = _schema_app().openapi()
SCHEMA = schemathesis.openapi.from_dict(RAW_SCHEMA)


def _breakable(spec: dict[str, Any]) -> bool:
    """Whether negative generation can break the operation's input: a body or a typed
    parameter can; a string path parameter cannot (every path segment is a string)."""
    typed = [p for p in spec.get("parameters", [])
             if p["in"] != "path" or p.get("schema", {}).get("type") != "string"]
    return "requestBody" in spec or bool(typed)


OPERATIONS = [(path, method.upper(), _breakable(spec))
              for path, methods in RAW_SCHEMA["paths"].items()
              for method, spec in methods.items()]
# Negative generation needs something to break: other operations get positive only.
CASES = [pytest.param(path, method, mode, id=f"{method} {path} {mode.value}")
         for path, method, breakable in OPERATIONS
         for mode in GenerationMode if breakable or mode.is_positive]
_STRATEGIES: dict[tuple[str, str, GenerationMode], Any] = {}


def _strategy(path: str, method: str, mode: GenerationMode) -> Any:
    key = (path, method, mode)
    if key not in _STRATEGIES:
        _STRATEGIES[key] = SCHEMA[path][method].as_strategy(mode)
    return _STRATEGIES[key]


# -- the stack -------------------------------------------------------------------------------


@dataclass(slots=True)
class Router:
    client: httpx.AsyncClient
    key: str
    other_scope_key: str  # valid, but a management key: refused here


def _deployments() -> list[deploy_pb2.DeploymentRecord]:
    active = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
    return [
        deploy_pb2.DeploymentRecord(
            id="chat-v1", model="chat", status=active, desired_replicas=1,
            spec=deploy_pb2.DeploymentSpec(engine="sim", queue_limit=16, queue_timeout_s=5.0)),
        deploy_pb2.DeploymentRecord(
            id="py-v1", model="echo", status=active, desired_replicas=1,
            spec=deploy_pb2.DeploymentSpec(engine="python", model_path=str(ECHO_MODEL),
                                           queue_limit=16, queue_timeout_s=5.0)),
    ]


def _replicas(nats: NatsServer, tmp: Path) -> list[RuntimeProcess]:
    return [
        # 1000x faster than real time: a generated max_tokens of a few hundred ends at once.
        RuntimeProcess(nats.url, tmp, replica_id="chat-a", extra=[
            "--deployment", "chat-v1", "--sim-time-scale", "0.001", "--max-model-len", "1024",
            "--load-report-interval", "0.2", "--heartbeat-interval", "1"]),
        RuntimeProcess(nats.url, tmp, engine="python", replica_id="py-1", extra=[
            "--deployment", "py-v1", "--model", str(ECHO_MODEL), "--heartbeat-interval", "1"]),
    ]


async def _wait_served(client: httpx.AsyncClient, key: str, timeout: float = 30.0) -> None:
    auth = {"authorization": f"Bearer {key}"}
    probes = [("/v1/completions", {"model": "chat", "prompt": "hi", "max_tokens": 1}),
              ("/v1/models/echo/predict", {"x": 1})]
    deadline = asyncio.get_running_loop().time() + timeout
    last: httpx.Response | None = None
    for path, body in probes:
        while True:
            last = await client.post(path, json=body, headers=auth)
            if last.status_code == 200:
                break
            assert asyncio.get_running_loop().time() < deadline, f"never served: {last.text}"
            await asyncio.sleep(0.2)


@pytest.fixture(scope="module")
async def router(module_nats: NatsServer, module_nc: Client,
                 tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Router]:
    nc = module_nc
    deployments = await bus.kv_bucket(nc, subjects.DEPLOYMENTS_BUCKET)
    for rec in _deployments():
        await deployments.put(rec.id, rec.SerializeToString())
    replicas = _replicas(module_nats, tmp_path_factory.mktemp("router-replicas"))
    for r in replicas:
        r.launch()
    table, fleet, index, channels = DeploymentTable(), Fleet(ttl_s=subjects.REPLICAS_TTL_S), \
        PrefixIndex(), Channels()
    dispatcher = _parts(table, fleet, index, channels,
                        publish=lambda s, d: asyncio.ensure_future(nc.publish(s, d)))
    watcher = StateWatcher(nc, fleet, index, table, channels, changed=dispatcher.changed.set)
    try:
        for r in replicas:
            await asyncio.to_thread(r.wait_ready, 90)
        await watcher.start()
        verifier = apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET))
        key = await apikeys.create(nc, "property", apikeys.INFERENCE)
        management_key = await apikeys.create(nc, "property-management", apikeys.MANAGEMENT)
        app = create_app(AppState(table, dispatcher, Tokenizers(), verifier))
        # raise_app_exceptions=False: an exception out of the app is the 500 a client sees.
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://router",
                                     timeout=60) as client:
            await _wait_served(client, key)
            yield Router(client, key, management_key)
    finally:
        await watcher.stop()
        await channels.close()
        for r in replicas:
            r.kill()


# -- drawing requests ------------------------------------------------------------------------


def _steer(case: Any, data: st.DataObject) -> None:
    """Now and then point the generated body's `model` (or the path's `name`) at a served
    model, so positive cases get past the 404 and reach a replica."""
    if isinstance(case.body, dict) and data.draw(st.booleans(), label="steer model"):
        case.body["model"] = data.draw(st.sampled_from(MODEL_NAMES), label="model")
    if case.path_parameters and "name" in case.path_parameters and data.draw(st.booleans()):
        case.path_parameters["name"] = data.draw(st.sampled_from(MODEL_NAMES), label="name")




def _check(r: httpx.Response, what: str, content: bytes | None = None) -> None:
    assert r.status_code < 500, f"{what} -> {r.status_code}: {r.text[:500]}"
    if r.status_code >= 400:
        error_of(r)
    elif r.headers.get("content-type", "").startswith("text/event-stream"):
        events = [ln for ln in r.text.splitlines() if ln]
        assert events and events[-1] == "data: [DONE]", r.text[-300:]


async def _send(router: Router, case: Any, headers: dict[str, str]
                ) -> tuple[httpx.Response, bytes | None]:
    kwargs = request_kwargs(case.as_transport_kwargs(base_url="http://router"))
    kwargs["headers"] = {**kwargs["headers"], **headers}
    return await router.client.request(**kwargs), kwargs.get("content")


def _what(case: Any, headers: dict[str, str]) -> str:
    kw = case.as_transport_kwargs(base_url="http://router")
    body = kw.get("json", kw.get("data"))
    return f"{kw['method']} {kw['url']} headers={headers} body={body!r:.400}"


# -- the properties --------------------------------------------------------------------------


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
@FUZZ
@given(data=st.data())
async def test_every_operation_with_a_key(router: Router, path: str, method: str,
                                          mode: GenerationMode, data: st.DataObject) -> None:
    case = data.draw(_strategy(path, method, mode), label="case")
    _steer(case, data)
    headers = data.draw(good_auth(router.key), label="auth")
    r, content = await _send(router, case, headers)
    event(f"status {r.status_code}")  # --hypothesis-show-statistics: what the cases reached
    _check(r, _what(case, headers), content)


@pytest.mark.parametrize(("path", "method", "mode"), CASES)
@FUZZ_NO_KEY
@given(data=st.data())
async def test_every_operation_without_a_valid_key(
    router: Router, path: str, method: str, mode: GenerationMode, data: st.DataObject,
) -> None:
    case = data.draw(_strategy(path, method, mode), label="case")
    _steer(case, data)
    headers = data.draw(bad_auth(router.key, router.other_scope_key), label="auth")
    r, content = await _send(router, case, headers)
    event(f"status {r.status_code}")  # --hypothesis-show-statistics: what the cases reached
    _check(r, _what(case, headers), content)
    if path == "/health":
        assert r.status_code == 200, r.text
    else:
        assert r.status_code == 401, _what(case, headers)
        assert error_of(r)["type"] == "authentication_error"


_prompts = st.one_of(st.text(max_size=200),
                     st.lists(st.integers(0, 255), min_size=1, max_size=64))
_chat_messages = st.lists(st.fixed_dictionaries({
    "role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=100)}),
    min_size=1, max_size=4)


@FUZZ
@given(data=st.data())
async def test_valid_requests_are_served(router: Router, data: st.DataObject) -> None:
    """Bodies within the schema, naming the sim model, get 200 from its replica."""
    sampling = st.fixed_dictionaries({"model": st.sampled_from(["chat", "chat-v1"])}, optional={
        "max_tokens": st.integers(1, 32), "temperature": st.floats(0, 2),
        "top_p": st.floats(0.01, 1), "top_k": st.integers(-1, 50),
        "seed": st.integers(0, 2**64 - 1),
        "stop": st.lists(st.text(max_size=5), max_size=4), "stream": st.booleans(),
        "ignore_eos": st.booleans(),
    })
    path = data.draw(st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
    body = data.draw(sampling)
    if path == "/v1/completions":
        body["prompt"] = data.draw(_prompts.filter(lambda p: p != ""))
    else:
        body["messages"] = data.draw(_chat_messages)
    r = await router.client.post(path, json=body,
                                 headers={"Authorization": f"Bearer {router.key}"})
    _check(r, f"POST {path} {body!r:.400}")
    assert r.status_code == 200, f"POST {path} {body!r:.400} -> {r.status_code} {r.text[:400]}"


def _json_values() -> st.SearchStrategy[Any]:
    finite = st.floats(allow_nan=False, allow_infinity=False)
    scalars = st.none() | st.booleans() | st.integers() | finite | st.text()
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ECHO_TRAPS), inner, max_size=4),
        max_leaves=20)


@FUZZ
@given(body=st.one_of(st.binary(max_size=256),
                     _json_values().map(lambda v: json.dumps(v).encode())))
async def test_predict_takes_any_bytes(router: Router, body: bytes) -> None:
    """The predict route has no body schema: any bytes are a 200 (JSON, from the echo model) or
    a 400 (not JSON), never a 5xx."""
    r = await router.client.post("/v1/models/echo/predict", content=body, headers={
        "Authorization": f"Bearer {router.key}", "Content-Type": "application/json"})
    _check(r, f"predict {body!r:.300}")
    assert r.status_code in (200, 400), f"{body!r:.300} -> {r.status_code} {r.text[:300]}"


# A JSON document nested past Python's recursion limit (1000): `json.loads` raises
# RecursionError, not ValueError; 1-2 KB of brackets, far under the body limit.
DEEP = [pytest.param(b"[" * 1000, id="unclosed"), pytest.param(b"[" * 1200 + b"]" * 1200,
                                                             id="closed")]


@pytest.mark.parametrize("body", DEEP)
async def test_predict_deeply_nested_json_is_a_400(router: Router, body: bytes) -> None:
    r = await router.client.post("/v1/models/echo/predict", content=body, headers={
        "Authorization": f"Bearer {router.key}", "Content-Type": "application/json"})
    _check(r, "predict [[[...")
    assert r.status_code == 400


# Minimal bodies `json.loads` fails on with other than a JSONDecodeError.
UNDECODABLE = [pytest.param(b"\xff", id="not-utf8"), *DEEP]


@pytest.mark.parametrize("path", ["/v1/completions", "/v1/chat/completions"])
@pytest.mark.parametrize("body", UNDECODABLE)
async def test_an_undecodable_json_body_is_an_openai_400(router: Router, path: str,
                                                         body: bytes) -> None:
    r = await router.client.post(path, content=body, headers={
        "Authorization": f"Bearer {router.key}", "Content-Type": "application/json"})
    assert r.status_code == 400, r.text
    error_of(r)


@pytest.mark.parametrize(("method", "path"), [("GET", "/v1/no-such-route"),
                                              ("DELETE", "/v1/completions")])
async def test_an_unknown_route_or_method_gets_the_openai_shape(router: Router, method: str,
                                                                path: str) -> None:
    r = await router.client.request(method, path,
                                    headers={"Authorization": f"Bearer {router.key}"})
    assert r.status_code in (404, 405), r.text
    error_of(r)
