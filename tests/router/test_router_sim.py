"""The router end to end over a fleet of simulator replicas: real NATS, gRPC and HTTP."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

import httpx
import openai
import pytest

from basalt import subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from tests.router_process import RouterProcess, write_deployments
from tests.runtime_process import REPO, RuntimeProcess

pytestmark = pytest.mark.integration
MODELS = Path(__file__).resolve().parents[1] / "runtime" / "models"


def _dep(dep_id: str, model: str, **kw) -> dict:
    return {"id": dep_id, "model": model, "engine": kw.pop("engine", "sim"), **kw}


def _replica(nats: NatsServer, tmp: Path, rid: str, dep: str, *extra: str) -> RuntimeProcess:
    return RuntimeProcess(
        nats.url, tmp, replica_id=rid,
        extra=["--deployment", dep, "--sim-time-scale", "0.05", "--max-model-len", "8192",
               "--load-report-interval", "0.2", "--heartbeat-interval", "1", *extra],
    )


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("router")
    deps = write_deployments(tmp / "deployments.yaml", [
        _dep("chat-v1", "chat"),
        _dep("lora-v1", "base-l", loras=[{"name": "ad1", "path": "/sim/ad1"},
                                         {"name": "ad2", "path": "/sim/ad2"}]),
        _dep("geo-v1", "geo"),
        _dep("py-v1", "echo", engine="python", model_path=str(MODELS / "echo")),
        _dep("empty-v1", "empty", queue_limit=1, queue_timeout_s=1.5),
    ])
    replicas = [
        _replica(nats_server, tmp, "chat-a", "chat-v1"),
        _replica(nats_server, tmp, "chat-b", "chat-v1"),
        _replica(nats_server, tmp, "lora-c", "lora-v1", "--lora-modules", "ad1=/sim/ad1"),
        _replica(nats_server, tmp, "lora-d", "lora-v1"),
        _replica(nats_server, tmp, "geo-us", "geo-v1", "--region", "us-east"),
        _replica(nats_server, tmp, "geo-eu", "geo-v1", "--region", "eu-west"),
        RuntimeProcess(nats_server.url, tmp, engine="python", replica_id="py-1",
                       extra=["--deployment", "py-v1", "--model", str(MODELS / "echo")]),
    ]
    for r in replicas:
        r.launch()
    router = RouterProcess(nats_server.url, tmp, deps, extra=["--region", "us-east"])
    # A second router instance: its own index, built from the same events.
    second = RouterProcess(nats_server.url, tmp, deps, name="router-2", extra=["--region", "us-east"])
    try:
        for r in replicas:
            r.wait_ready(90)
        router.start()
        second.start()
        _wait_routable(router, ["chat", "base-l", "geo", "echo"])
        yield router, {r.replica_id: r for r in replicas}, second
    finally:
        router.kill()
        second.kill()
        for r in replicas:
            r.kill()


def _wait_routable(router: RouterProcess, models: list[str], timeout: float = 20.0) -> None:
    """Wait until the router has seen a ready replica of each model."""
    deadline = time.monotonic() + timeout
    pending = list(models)
    while pending and time.monotonic() < deadline:
        model = pending[0]
        path = "/v1/models/echo/predict" if model == "echo" else "/v1/completions"
        body = {"x": 1} if model == "echo" else {"model": model, "prompt": "hi", "max_tokens": 1}
        try:
            r = httpx.post(router.base_url + path, json=body, timeout=5)
            if r.status_code == 200:
                pending.pop(0)
                continue
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    assert not pending, f"never routable: {pending}\n{router.log_tail()}"


def _client(router: RouterProcess, **kw) -> openai.OpenAI:
    return openai.OpenAI(base_url=router.base_url + "/v1", api_key=kw.pop("api_key", "none"), **kw)


def test_openai_chat_non_stream_and_stream(stack) -> None:
    router = stack[0]
    client = _client(router)
    out = client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello there"}], max_tokens=8)
    assert out.choices[0].finish_reason == "length"
    assert out.usage.completion_tokens == 8
    assert out.usage.prompt_tokens > 5
    chunks = list(client.chat.completions.create(
        model="chat", messages=[{"role": "user", "content": "hello again"}], max_tokens=8,
        stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8


def test_openai_completions_non_stream_and_stream(stack) -> None:
    router = stack[0]
    client = _client(router)
    out = client.completions.create(model="chat", prompt="once upon a time", max_tokens=5)
    assert out.usage.completion_tokens == 5 and out.choices[0].finish_reason == "length"
    texts = [c.choices[0].text for c in client.completions.create(
        model="chat", prompt="once upon a time", max_tokens=5, stream=True) if c.choices]
    assert len(texts) >= 2


def test_models_lists_models_and_adapters(stack) -> None:
    router = stack[0]
    ids = {m.id for m in _client(router).models.list()}
    assert {"chat", "base-l", "ad1", "ad2", "geo"} <= ids
    assert "empty" in ids, "no replica ready, still served (a request waits for one)"
    assert not ids & {"echo", "py-v1"}, "a python model is served by the predict route only"


def test_sse_wire_format_ends_with_done(stack) -> None:
    router = stack[0]
    with httpx.stream("POST", router.base_url + "/v1/completions", json={
        "model": "chat", "prompt": "abc", "max_tokens": 3, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [ln for ln in r.iter_lines() if ln]
    assert all(ln.startswith("data: ") for ln in lines)
    assert lines[-1] == "data: [DONE]"
    json.loads(lines[0][len("data: "):])


def _served_by(router: RouterProcess, model: str, prompt: str, headers=None) -> tuple[str, int]:
    r = httpx.post(router.base_url + "/v1/completions", headers=headers or {}, timeout=30,
                   json={"model": model, "prompt": prompt, "max_tokens": 2})
    assert r.status_code == 200, r.text
    return r.headers["x-basalt-replica"], r.json()["usage"]["prompt_tokens_details"]["cached_tokens"]


def test_repeated_prefix_goes_to_the_replica_that_holds_it(stack) -> None:
    router = stack[0]
    prefixes = [f"{i} " * 8 + f"system prompt {i}: " + ("lorem ipsum dolor sit amet " * 30)
                for i in range(6)]

    async def first_round():  # concurrent, so load must spread
        async with httpx.AsyncClient(base_url=router.base_url, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/completions", json={
                "model": "chat", "prompt": p + "first question", "max_tokens": 30})
                for p in prefixes))
        return {i: r.headers["x-basalt-replica"] for i, r in enumerate(rs)}

    first = asyncio.run(first_round())
    assert set(first.values()) == {"chat-a", "chat-b"}, "distinct prefixes should spread load"
    time.sleep(0.5)  # KV events reach the routers
    for i, p in enumerate(prefixes):
        replica, cached = _served_by(router, "chat", p + "second question, different")
        assert replica == first[i], f"prefix {i} left the replica that caches it"
        assert cached >= 16 * 40
    second = stack[2]  # never saw these requests, only the replicas' KV events
    for i, p in enumerate(prefixes):
        replica, cached = _served_by(second, "chat", p + "third question")
        assert replica == first[i], f"the second router sent prefix {i} elsewhere"
        assert cached >= 16 * 40


def test_lora_request_prefers_the_replica_with_the_adapter_loaded(stack) -> None:
    router = stack[0]
    for i in range(4):
        replica, _ = _served_by(router, "ad1", f"query {i} " * 3)
        assert replica == "lora-c"


def test_client_region_prefers_a_replica_in_that_region(stack) -> None:
    router = stack[0]
    for i in range(3):
        eu, _ = _served_by(router, "geo", f"bonjour {i}", {"x-basalt-region": "eu-west"})
        us, _ = _served_by(router, "geo", f"hello {i}", {"x-basalt-region": "us-east"})
        assert (eu, us) == ("geo-eu", "geo-us")


def test_predict_route_for_python_models(stack) -> None:
    router = stack[0]
    r = httpx.post(router.base_url + "/v1/models/echo/predict", json={"text": "hi"})
    assert r.status_code == 200, r.text
    assert "hi" in r.text


@pytest.mark.parametrize(("kwargs", "status", "needle"), [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400, ""),
    ({"json": {"model": "nope", "prompt": "x"}}, 404, "nope"),
    ({"json": {"model": "chat", "prompt": "x" * 9000, "max_tokens": 4}}, 400, "context length"),
    ({"json": {"model": "chat", "prompt": "x", "temperature": 7}}, 400, "temperature"),
    ({"json": {"model": "chat", "prompt": "x", "max_tokens": 0}}, 400, "max_tokens"),
    ({"json": {"model": "chat"}}, 400, "prompt"),
    # Past the wire types (uint32 / int32 / uint64, and uint32 token ids): 400, never 500.
    ({"json": {"model": "chat", "prompt": "x", "max_tokens": 2**32}}, 400, "max_tokens"),
    ({"json": {"model": "chat", "prompt": "x", "top_k": 2**31}}, 400, "top_k"),
    ({"json": {"model": "chat", "prompt": "x", "seed": 2**64}}, 400, "seed"),
    ({"json": {"model": "chat", "prompt": [5, 2**32]}}, 400, "token ids"),
])
def test_bad_input_gets_a_clear_4xx_and_the_router_keeps_serving(stack, kwargs, status, needle) -> None:
    router = stack[0]
    r = httpx.post(router.base_url + "/v1/completions", timeout=30, **kwargs)
    assert r.status_code == status, r.text
    assert needle in r.json()["error"]["message"]
    assert _served_by(router, "chat", "still fine")[0]


def test_queue_waits_then_times_out_and_rejects_past_its_limit(stack) -> None:
    router = stack[0]

    async def go():
        async with httpx.AsyncClient(base_url=router.base_url, timeout=30) as c:
            body = {"model": "empty", "prompt": "x", "max_tokens": 1}
            waiting = asyncio.create_task(c.post("/v1/completions", json=body))
            await asyncio.sleep(0.5)
            rejected = await c.post("/v1/completions", json=body)
            return await waiting, rejected

    t0 = time.monotonic()
    waited, rejected = asyncio.run(go())
    assert rejected.status_code == 429 and rejected.json()["error"]["code"] == "queue_full"
    assert waited.status_code == 503 and time.monotonic() - t0 >= 1.4


async def test_request_records_are_published(stack, nc) -> None:
    router = stack[0]
    sub = await nc.subscribe(subjects.requests("chat-v1"))
    await asyncio.to_thread(_served_by, router, "chat", "record me")
    rec = deploy_pb2.RequestRecord.FromString((await sub.next_msg(timeout=5)).data)
    await sub.unsubscribe()
    assert rec.outcome == "ok" and rec.replica_id in ("chat-a", "chat-b")
    assert rec.completion_tokens == 2 and rec.prompt_tokens > 0 and rec.ttft_ms > 0


def test_failover_when_a_replica_is_killed_under_load(nats_server: NatsServer, tmp_path) -> None:
    deps = write_deployments(tmp_path / "d.yaml", [_dep("fo-v1", "fo", routing_policy="round_robin")])
    a = _replica(nats_server, tmp_path, "fo-a", "fo-v1").launch()
    b = _replica(nats_server, tmp_path, "fo-b", "fo-v1").launch()
    router = RouterProcess(nats_server.url, tmp_path, deps, name="router-fo")
    try:
        a.wait_ready(60), b.wait_ready(60)
        router.start()
        _wait_routable(router, ["fo"])

        async def load():
            async with httpx.AsyncClient(base_url=router.base_url, timeout=60) as c:
                async def one(i):
                    return await c.post("/v1/completions", json={
                        "model": "fo", "prompt": f"request {i}", "max_tokens": 40})
                tasks = [asyncio.create_task(one(i)) for i in range(30)]
                await asyncio.sleep(0.3)
                a.proc.kill()
                return await asyncio.gather(*tasks)

        results = asyncio.run(load())
        failed = [r for r in results if r.status_code != 200]
        # Round robin: half went to fo-a. None of these requests streams: the client is sent
        # nothing before the whole answer, so those fo-a was generating when it died are
        # retried on fo-b from the start, like those it had not begun: every one succeeds.
        assert not failed, [r.text for r in failed]
        after = [_served_by(router, "fo", f"after {i}")[0] for i in range(4)]
        assert set(after) == {"fo-b"}
    finally:
        router.kill()
        a.kill()
        b.kill()


def test_api_keys_guard_every_route_but_health(nats_server: NatsServer, tmp_path) -> None:
    deps = write_deployments(tmp_path / "d.yaml", [_dep("auth-v1", "authm")])
    rep = _replica(nats_server, tmp_path, "auth-a", "auth-v1").start()
    router = RouterProcess(nats_server.url, tmp_path, deps, name="router-auth", extra=["--auth"])
    try:
        router.start()
        key = subprocess.run([sys.executable, "-m", "basalt_cli", "keys", "create", "--name", "t",
                              "--nats-url", nats_server.url], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        body = {"model": "authm", "prompt": "hi", "max_tokens": 2}
        url = router.base_url + "/v1/completions"
        assert httpx.get(router.base_url + "/health").status_code == 200
        assert httpx.post(url, json=body).status_code == 401
        assert httpx.post(url, json=body, headers={"Authorization": "Bearer bsk_x.y"}).status_code == 401
        assert httpx.get(router.base_url + "/v1/models").status_code == 401
        deadline = time.monotonic() + 15
        while True:
            ok = httpx.post(url, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=10)
            if ok.status_code == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert ok.status_code == 200, ok.text
        assert httpx.post(url, json=body, headers={"Authorization": f"Api-Key {key}"},
                          timeout=10).status_code == 200
        assert _client(router, api_key=key).models.list().data
    finally:
        router.kill()
        rep.kill()
