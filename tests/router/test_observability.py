"""The router's observability and error shapes, against a real router process (real NATS, a
simulator replica, API keys): one access line per request (streamed, not streamed, refused,
cancelled) that agrees with the request's record and never carries the prompt or the key;
/docs and /openapi.json behind the key; OpenAI-shaped errors on every route; /v1/models
listing only what chat and completions can serve."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from basalt import apikeys, bus, subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from tests.router_process import RouterProcess, write_deployments
from tests.runtime_process import RuntimeProcess

pytestmark = pytest.mark.integration
MODELS = Path(__file__).resolve().parents[1] / "runtime" / "models"
ACCESS_FIELDS = {"request_id", "method", "route", "status", "outcome", "error", "model",
                 "deployment", "replica", "lora", "key_id", "stream", "tokens", "queue_ms",
                 "ttft_ms", "total_ms"}


@dataclass
class Stack:
    router: RouterProcess
    key: str
    limited_key: str
    nats_url: str

    def auth(self, key: str | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {key or self.key}"}


async def _keys(url: str) -> tuple[str, str]:
    nc = await bus.connect(url, name="test-keys")
    try:
        # A rate of 0.01/s: a burst of one request, then 429 for the rest of the test.
        return (await apikeys.create(nc, "obs"),
                await apikeys.create(nc, "obs-limited", rate_per_s=0.01))
    finally:
        await nc.close()


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("observability")
    deps = write_deployments(tmp / "deployments.yaml", [
        {"id": "obs-v1", "model": "obs", "engine": "sim"},
        {"id": "dead-v1", "model": "dead", "engine": "sim", "active": False},
        {"id": "pyobs-v1", "model": "pyobs", "engine": "python",
         "model_path": str(MODELS / "echo")},
    ])
    replica = RuntimeProcess(nats_server.url, tmp, replica_id="obs-a", extra=[
        "--deployment", "obs-v1", "--sim-time-scale", "0.05", "--max-model-len", "8192",
        "--load-report-interval", "0.2", "--heartbeat-interval", "1"])
    router = RouterProcess(nats_server.url, tmp, deps, name="router-obs", extra=["--auth"])
    try:
        replica.start(90)
        router.start()
        key, limited = asyncio.run(_keys(nats_server.url))
        s = Stack(router, key, limited, nats_server.url)
        _wait_served(s)
        yield s
    finally:
        router.kill()
        replica.kill()


def _wait_served(s: Stack, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        r = httpx.post(s.router.base_url + "/v1/completions", headers=s.auth(), timeout=10,
                       json={"model": "obs", "prompt": "warm", "max_tokens": 1})
        if r.status_code == 200:
            return
        assert time.monotonic() < deadline, f"never served: {r.text}\n{s.router.log_tail()}"
        time.sleep(0.3)


def _access_line(router: RouterProcess, request_id: str, timeout: float = 10.0) -> dict[str, Any]:
    """The one access line of `request_id` in the router's log (waits for it)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [line for line in _log_lines(router)
                 if line.get("event") == "access" and line.get("request_id") == request_id]
        if found or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert len(found) == 1, f"{len(found)} access lines for {request_id}:\n{router.log_tail()}"
    assert set(found[0]) >= ACCESS_FIELDS
    return found[0]


def _log_lines(router: RouterProcess) -> list[dict[str, Any]]:
    out = []
    for text in router.log_path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(text))
        except ValueError:
            continue
    return out


def _assert_clean(router: RouterProcess, *secrets: str) -> None:
    text = router.log_path.read_text(errors="replace")
    for secret in secrets:
        assert secret not in text, f"the router's log holds {secret[:12]}..."


def test_a_request_logs_one_line_that_agrees_with_its_record(stack: Stack) -> None:
    prompt = "the secret prompt of the non-streamed request"

    async def go() -> tuple[httpx.Response, deploy_pb2.RequestRecord]:
        nc = await bus.connect(stack.nats_url, name="test-records")
        sub = await nc.subscribe(subjects.requests("obs-v1"))
        async with httpx.AsyncClient(timeout=30) as c:
            r = await c.post(stack.router.base_url + "/v1/chat/completions",
                             headers={**stack.auth(), "x-request-id": "obs-plain"},
                             json={"model": "obs", "max_tokens": 4,
                                   "messages": [{"role": "user", "content": prompt}]})
        while True:  # other tests' records may come first
            rec = deploy_pb2.RequestRecord.FromString((await sub.next_msg(timeout=10)).data)
            if rec.request_id == "obs-plain":
                break
        await nc.close()
        return r, rec

    r, rec = asyncio.run(go())
    assert r.status_code == 200, r.text
    line = _access_line(stack.router, "obs-plain")
    assert line["method"] == "POST" and line["route"] == "/v1/chat/completions"
    assert (line["status"], line["outcome"], line["stream"]) == (200, "ok", False)
    assert (line["model"], line["deployment"], line["replica"]) == ("obs", "obs-v1", "obs-a")
    assert line["key_id"] == apikeys.key_id_of(stack.key)
    assert line["tokens"] == {"prompt": rec.prompt_tokens, "cached": rec.cached_tokens,
                              "output": rec.completion_tokens}
    assert line["tokens"]["output"] == 4 == r.json()["usage"]["completion_tokens"]
    assert line["queue_ms"] == round(rec.queue_wait_ms, 2)
    assert line["ttft_ms"] == round(rec.ttft_ms, 2) and line["ttft_ms"] > 0
    assert line["total_ms"] >= line["ttft_ms"]
    assert line["level"] == "info" and line["service"] == "router"
    _assert_clean(stack.router, prompt, stack.key)


def test_a_stream_logs_once_at_its_end(stack: Stack) -> None:
    prompt = "the secret prompt of the streamed request"
    with httpx.stream("POST", stack.router.base_url + "/v1/completions", timeout=30,
                      headers={**stack.auth(), "x-request-id": "obs-stream"},
                      json={"model": "obs", "prompt": prompt, "max_tokens": 6,
                            "stream": True}) as r:
        assert r.status_code == 200
        chunks = [ln for ln in r.iter_lines() if ln]
    assert chunks[-1] == "data: [DONE]"
    line = _access_line(stack.router, "obs-stream")
    assert (line["status"], line["outcome"], line["stream"]) == (200, "ok", True)
    assert line["tokens"]["output"] == 6 and line["tokens"]["prompt"] > 0
    assert line["replica"] == "obs-a" and line["ttft_ms"] > 0
    _assert_clean(stack.router, prompt, stack.key)


def test_a_client_that_leaves_a_stream_is_logged_cancelled(stack: Stack) -> None:
    prompt = "the secret prompt of the abandoned stream"
    with httpx.stream("POST", stack.router.base_url + "/v1/completions", timeout=30,
                      headers={**stack.auth(), "x-request-id": "obs-gone"},
                      json={"model": "obs", "prompt": prompt, "max_tokens": 4000,
                            "ignore_eos": True, "stream": True}) as r:
        assert r.status_code == 200
        first = next(ln for ln in r.iter_lines() if ln)
        assert first.startswith("data: ")
    # The connection is closed here, thousands of tokens early.
    line = _access_line(stack.router, "obs-gone")
    assert (line["status"], line["outcome"], line["stream"]) == (200, "cancelled", True)
    assert 0 < line["tokens"]["output"] < 4000
    _assert_clean(stack.router, prompt)


def test_refusals_are_logged_with_what_is_known(stack: Stack) -> None:
    base = stack.router.base_url
    body = {"model": "obs", "prompt": "the secret prompt of a refused request", "max_tokens": 1}
    bad_key = "bsk_nosuchkey.notasecret"
    r = httpx.post(base + "/v1/completions", json=body, timeout=10,
                   headers={**stack.auth(bad_key), "x-request-id": "obs-401"})
    assert r.status_code == 401 and r.json()["error"]["code"] == "invalid_api_key"
    line = _access_line(stack.router, "obs-401")
    assert (line["status"], line["outcome"], line["error"]) == (401, "unauthorized",
                                                                "invalid_api_key")
    assert line["key_id"] is None and line["model"] is None and line["tokens"] is None

    statuses = []
    for i in range(2):  # the limited key's one request, then its refusal
        r = httpx.post(base + "/v1/completions", json=body, timeout=10,
                       headers={**stack.auth(stack.limited_key), "x-request-id": f"obs-429-{i}"})
        statuses.append(r.status_code)
    assert statuses == [200, 429], statuses
    assert r.json()["error"]["code"] == "rate_limited" and r.headers["retry-after"]
    line = _access_line(stack.router, "obs-429-1")
    assert (line["status"], line["outcome"], line["error"]) == (429, "rate_limited",
                                                                "rate_limited")
    assert line["key_id"] == apikeys.key_id_of(stack.limited_key)

    r = httpx.post(base + "/v1/completions", json={**body, "model": "nope"}, timeout=10,
                   headers={**stack.auth(), "x-request-id": "obs-404"})
    assert r.status_code == 404
    line = _access_line(stack.router, "obs-404")
    assert (line["status"], line["outcome"], line["error"], line["model"]) == (
        404, "client_error", "model_not_found", "nope")

    r = httpx.post(base + "/v1/completions", json={**body, "temperature": 7}, timeout=10,
                   headers={**stack.auth(), "x-request-id": "obs-400"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "temperature"
    assert _access_line(stack.router, "obs-400")["status"] == 400
    _assert_clean(stack.router, body["prompt"], stack.key, stack.limited_key, bad_key)


def test_docs_and_openapi_need_the_key(stack: Stack) -> None:
    base = stack.router.base_url
    for path in ("/docs", "/openapi.json"):
        r = httpx.get(base + path, timeout=10)
        assert r.status_code == 401, (path, r.text)
        assert r.json()["error"]["type"] == "authentication_error"
    doc = httpx.get(base + "/openapi.json", headers=stack.auth(), timeout=10)
    assert doc.status_code == 200
    spec = doc.json()
    assert {"/v1/chat/completions", "/v1/completions", "/v1/models"} <= set(spec["paths"])
    assert spec["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
    assert spec["paths"]["/health"]["get"]["security"] == []
    page = httpx.get(base + "/docs", headers=stack.auth(), timeout=10)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert "SwaggerUIBundle" in page.text and "/v1/chat/completions" in page.text


def _assert_openai_error(r: httpx.Response, status: int, code: str | None) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"} and err["message"]
    assert err["code"] == code
    assert "detail" not in r.json()


def test_every_route_answers_errors_in_the_openai_shape(stack: Stack) -> None:
    base, auth = stack.router.base_url, stack.auth()
    r = httpx.get(base + "/v1/nothing-here", headers={**auth, "x-request-id": "obs-route"})
    _assert_openai_error(r, 404, "not_found")
    line = _access_line(stack.router, "obs-route")
    assert (line["status"], line["outcome"], line["error"]) == (404, "client_error", "not_found")
    _assert_openai_error(httpx.get(base + "/v1/nothing-here"), 401, "invalid_api_key")
    _assert_openai_error(httpx.get(base + "/v1/chat/completions", headers=auth), 405,
                         "method_not_allowed")
    _assert_openai_error(httpx.delete(base + "/v1/models", headers=auth), 405,
                         "method_not_allowed")
    _assert_openai_error(httpx.post(base + "/v1/completions", content=b"{not json",
                                    headers={**auth, "content-type": "application/json"}),
                         400, None)
    r = httpx.post(base + "/v1/completions", json={"model": "pyobs", "prompt": "x"},
                   headers=auth)
    _assert_openai_error(r, 400, None)
    assert r.json()["error"]["param"] == "model"


def test_models_lists_only_what_chat_and_completions_serve(stack: Stack) -> None:
    r = httpx.get(stack.router.base_url + "/v1/models", headers=stack.auth(), timeout=10)
    assert r.status_code == 200, r.text
    ids = {m["id"] for m in r.json()["data"]}
    assert {"obs", "obs-v1"} <= ids
    assert not ids & {"dead", "dead-v1"}, "an inactive deployment cannot serve"
    assert not ids & {"pyobs", "pyobs-v1"}, "a python model answers the predict route only"


def test_the_ready_file_and_line_name_the_metrics_address(stack: Stack) -> None:
    ready = json.loads((stack.router.workdir / "router-obs.ready.json").read_text())
    assert ready["metrics"] == f"127.0.0.1:{ready['metrics_port']}" and ready["metrics_port"]
    lines = [ln for ln in _log_lines(stack.router) if ln.get("event") == "router_ready"]
    assert lines and lines[-1]["metrics"] == ready["metrics"]
    scraped = httpx.get(f"http://{ready['metrics']}/metrics", timeout=10)
    assert "basalt_router_requests" in scraped.text


def test_no_access_log_writes_none(nats_server: NatsServer, tmp_path: Path) -> None:
    router = RouterProcess(nats_server.url, tmp_path, name="router-quiet",
                           extra=["--no-access-log"]).start()
    try:
        assert httpx.get(router.base_url + "/v1/models", timeout=10).status_code == 200
        assert httpx.get(router.base_url + "/nope", timeout=10).status_code == 404
        time.sleep(0.3)
        assert not [ln for ln in _log_lines(router) if ln.get("event") == "access"]
    finally:
        router.kill()

