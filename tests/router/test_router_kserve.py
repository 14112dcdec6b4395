"""The router's KServe v2 front door, driven by the unmodified tritonclient.grpc over sim replicas.

tritonclient runs only in a spawned helper process (tests/triton_client.py): it cannot share a
process with basalt.pb.kserve_pb2, which the stop test below loads here. One stack for the
module: a sim replica (with a LoRA adapter), a python-model replica, an open router and a router
with API keys on.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from basalt import subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from tests.router_process import RouterProcess, write_deployments
from tests.runtime_process import REPO, RuntimeProcess
from tests.triton_client import (
    Spec,
    TritonHelper,
    client_health,
    client_infer,
    client_model_ready,
    client_stream,
    client_wait_model_ready,
    text,
)

pytestmark = pytest.mark.integration
MODELS = Path(__file__).resolve().parents[1] / "runtime" / "models"
CHAT, PY = "kchat", "kecho"


def _max_tokens(n: int) -> Spec:
    return ("max_tokens", "INT32", [n], [1])


EXCLUDE: Spec = ("exclude_input_in_output", "BOOL", [True], [1])


class Stack:
    def __init__(self, triton: TritonHelper, open_router: RouterProcess,
                 auth_router: RouterProcess, key: str) -> None:  # fmt: skip
        self.triton = triton
        self.open = f"127.0.0.1:{open_router.grpc_port}"
        self.auth = f"127.0.0.1:{auth_router.grpc_port}"
        self.key = key
        self.routers = (open_router, auth_router)

    @property
    def bearer(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.key}"}


@pytest.fixture(scope="module")
def stack(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("router-kserve")
    deps = write_deployments(
        tmp / "deployments.yaml",
        [
            {"id": "ks-chat-v1", "model": CHAT, "engine": "sim",
             "loras": [{"name": "ks-ad1", "path": "/sim/ks-ad1"}]},
            {"id": "ks-py-v1", "model": PY, "engine": "python", "model_path": str(MODELS / "echo")},
            {"id": "ks-empty-v1", "model": "kempty", "engine": "sim"},
        ],
        [{"model": CHAT, "name": "production", "deployment_id": "ks-chat-v1"}],
    )  # fmt: skip
    replicas = [
        RuntimeProcess(nats_server.url, tmp, replica_id="ks-chat-a", extra=[
            "--deployment", "ks-chat-v1", "--sim-time-scale", "0.05", "--max-model-len", "4096",
            "--load-report-interval", "0.2", "--heartbeat-interval", "1",
            "--lora-modules", "ks-ad1=/sim/ks-ad1"]),
        RuntimeProcess(nats_server.url, tmp, engine="python", replica_id="ks-py-1", extra=[
            "--deployment", "ks-py-v1", "--model", str(MODELS / "echo"),
            "--heartbeat-interval", "1"]),
    ]  # fmt: skip
    routers = [
        RouterProcess(nats_server.url, tmp, deps, name="router-ks"),
        RouterProcess(nats_server.url, tmp, deps, name="router-ks-auth", extra=["--auth"]),
    ]
    triton = TritonHelper()
    try:
        for r in replicas:
            r.launch()
        for r in replicas:
            r.wait_ready(60)
        for router in routers:
            router.start()
        key = subprocess.run(
            [sys.executable, "-m", "basalt_cli", "keys", "create", "--name", "kserve-test",
             "--nats-url", nats_server.url], cwd=REPO, capture_output=True, text=True, check=True,
        ).stdout.strip()  # fmt: skip
        s = Stack(triton, routers[0], routers[1], key)
        for address, headers in ((s.open, None), (s.auth, s.bearer)):
            ready = triton(client_wait_model_ready, address, [CHAT, PY], 30.0, headers)
            assert all(ready.values()), (ready, [r.log_tail() for r in routers])
        yield s
    finally:
        triton.close()
        for router in routers:
            router.kill()
        for replica in replicas:
            replica.kill()


def test_health_metadata_and_model_readiness_follow_name_resolution(stack: Stack) -> None:
    h = stack.triton(client_health, stack.open, CHAT)
    assert (h["live"], h["ready"], h["model_ready"], h["server"]) == (True, True, True, "basalt")
    assert h["platform"] == "sim" and h["outputs"] == {"text_output": "BYTES"}
    assert h["inputs"]["text_input"] == "BYTES" and h["inputs"]["max_tokens"] == "INT32"
    names = ["ks-chat-v1", CHAT, f"{CHAT}@production", "ks-ad1", PY, "kempty", "nope"]
    ready = stack.triton(client_model_ready, stack.open, names)
    assert ready == {**dict.fromkeys(names, True), "kempty": False, "nope": False}


def test_infer_returns_generated_text_for_every_kind_of_model_name(stack: Stack) -> None:
    out = stack.triton(client_infer, stack.open, CHAT, [text("Hello there"), _max_tokens(6)])
    whole = out["outputs"][0]
    assert whole.startswith(b"Hello there") and len(whole) > len(b"Hello there")
    for name in (f"{CHAT}@production", "ks-ad1", "ks-chat-v1"):
        out = stack.triton(
            client_infer, stack.open, name, [text("Hi", [1, 1]), EXCLUDE],
            {"max_tokens": 3, "temperature": "0.5"},
        )  # fmt: skip
        assert out.get("outputs") and out["outputs"][0], (name, out)
        assert not out["outputs"][0].startswith(b"Hi")


def test_stream_sends_deltas_then_a_final_response_and_survives_bad_requests(
    stack: Stack,
) -> None:
    n = _max_tokens(8)
    out = stack.triton(
        client_stream, stack.open, CHAT,
        [("a", [text("first"), n, EXCLUDE]), ("bad", [n]), ("b", [text("second"), n, EXCLUDE])],
    )  # fmt: skip
    errors = [msg for kind, msg, *_ in out if kind == "error"]
    assert len(errors) == 1 and "text_input" in errors[0]
    for request_id in ("a", "b"):  # the bad request did not end the stream
        responses = [r for r in out if r[0] == request_id]
        assert len(responses) >= 2, responses
        assert [final for _, _, final in responses] == [False] * (len(responses) - 1) + [True]
        assert "".join(t for _, t, _ in responses)


def test_unknown_model_is_not_found_with_its_name(stack: Stack) -> None:
    out = stack.triton(client_infer, stack.open, "no-such-model", [text("x")])
    assert "NOT_FOUND" in out["status"] and "`no-such-model` does not exist" in out["message"]
    streamed = stack.triton(client_stream, stack.open, "no-such-model", [("z", [text("x")])])
    assert len(streamed) == 1 and streamed[0][0] == "error"
    assert "no-such-model" in streamed[0][1]


@pytest.mark.parametrize(
    ("specs", "params", "needle"),
    [
        ([_max_tokens(4)], None, "'text_input'"),
        ([("text_input", "INT32", [7], [1])], None, "must be BYTES, got INT32"),
        ([text("x"), _max_tokens(0)], None, "max_tokens"),
        ([text("x"), ("temperature", "FP32", [-1.0], [1])], None, "temperature"),  # the replica's
        ([text("x"), ("stream", "BOOL", [True], [1])], None, "ModelStreamInfer"),
        ([text("x")], {"lora_name": "nope"}, "no LoRA adapter 'nope'"),
    ],
)
def test_bad_input_is_invalid_argument_and_the_router_keeps_serving(
    stack: Stack, specs: list[Spec], params: dict | None, needle: str
) -> None:
    out = stack.triton(client_infer, stack.open, CHAT, specs, params)
    assert "INVALID_ARGUMENT" in out["status"] and needle in out["message"], out
    assert stack.triton(client_infer, stack.open, CHAT, [text("ok"), _max_tokens(2)])["outputs"]


def test_python_model_takes_a_json_document_and_returns_json(stack: Stack) -> None:
    doc = ("json", "BYTES", [json.dumps({"text": "hi"})], [1])
    out = stack.triton(client_infer, stack.open, PY, [doc], output="output")
    assert json.loads(out["outputs"][0])["echo"] == {"text": "hi"}
    bad = ("json", "BYTES", [json.dumps({"raise": "ValueError"})], [1])
    refused = stack.triton(client_infer, stack.open, PY, [bad], output="output")
    assert (
        "INVALID_ARGUMENT" in refused["status"] and "text must not be empty" in refused["message"]
    )


def _access_lines(router: RouterProcess) -> list[dict]:
    lines = []
    for raw in router.log_path.read_text(errors="replace").splitlines():
        try:
            line = json.loads(raw)
        except ValueError:
            continue
        if line.get("event") == "access":
            lines.append(line)
    return lines


def test_each_inference_request_writes_an_access_line(stack: Stack) -> None:
    prompt = "a kserve prompt that no log may hold"
    out = stack.triton(client_infer, stack.open, CHAT, [text(prompt), _max_tokens(3)])
    assert out.get("outputs"), out
    stack.triton(client_infer, stack.open, "no-such-model-logged", [text("x")])
    open_router, auth_router = stack.routers
    lines = _access_lines(open_router)
    served = [ln for ln in lines if ln["route"].endswith("/ModelInfer") and ln["model"] == CHAT
              and ln["tokens"] and ln["tokens"]["output"] == 3]
    assert served, lines[-5:]
    line = served[-1]
    assert (line["method"], line["status"], line["outcome"]) == ("GRPC", 200, "ok")
    assert line["deployment"] == "ks-chat-v1" and line["replica"] == "ks-chat-a"
    missing = [ln for ln in lines if ln["model"] == "no-such-model-logged"][-1]
    assert (missing["status"], missing["error"]) == (404, "model_not_found")
    assert prompt not in open_router.log_path.read_text(errors="replace")
    refused = stack.triton(client_infer, stack.auth, CHAT, [text("x")], None,
                           headers={"authorization": "Bearer bsk_x.y"})
    assert "UNAUTHENTICATED" in refused["status"]
    assert any(ln["status"] == 401 and ln["route"].endswith("/ModelInfer")
               for ln in _access_lines(auth_router))
    assert "bsk_x.y" not in auth_router.log_path.read_text(errors="replace")


async def test_api_keys_guard_every_kserve_call_but_grpc_health(stack: Stack, nc) -> None:
    def call(fn, *args, **kwargs):  # type: ignore[no-untyped-def]
        return asyncio.to_thread(stack.triton, fn, stack.auth, *args, **kwargs)

    records = await nc.subscribe(subjects.requests("ks-chat-v1"))
    wrong = {"authorization": "Bearer bsk_x.y"}
    for headers in (None, wrong, {"authorization": stack.key}):  # no scheme: not a key either
        refused = await call(client_infer, CHAT, [text("x")], None, headers=headers)
        assert "UNAUTHENTICATED" in refused["status"], refused
        assert "API key" in refused["message"]
    assert "UNAUTHENTICATED" in (await call(client_health, CHAT))["status"]
    streamed = await call(client_stream, CHAT, [("s", [text("x")])])
    assert len(streamed) == 1 and streamed[0][0] == "error" and "API key" in streamed[0][1]
    with pytest.raises(TimeoutError):  # no work was done: the router published no request
        await records.next_msg(timeout=0.5)

    for scheme in ("Bearer", "Api-Key"):
        headers = {"authorization": f"{scheme} {stack.key}"}
        out = await call(client_infer, CHAT, [text("hi"), _max_tokens(2)], None, headers=headers)
        assert out.get("outputs"), out
        assert (await call(client_health, CHAT, headers=headers))["model_ready"] is True
    record = deploy_pb2.RequestRecord.FromString((await records.next_msg(timeout=5)).data)
    assert (record.outcome, record.completion_tokens) == ("ok", 2)
    await records.unsubscribe()

    async with grpc.aio.insecure_channel(stack.auth) as channel:
        check = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert (await check).status == health_pb2.HealthCheckResponse.SERVING


async def test_stop_kserve_servers_stops_serving() -> None:
    from services.router.core.deployments import DeploymentTable
    from services.router.kserve import start_kserve_server, stop_kserve_servers

    settings = SimpleNamespace(grpc_host="127.0.0.1", grpc_port=0)
    port = await start_kserve_server(settings, DeploymentTable(), None, None, None)  # type: ignore[arg-type]
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        assert (await stub.Check(request)).status == health_pb2.HealthCheckResponse.SERVING
        await stop_kserve_servers()
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.Check(request, timeout=2)
        assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
