"""Each attack from issue 8, replayed against `basalt up --engine sim` with its default
security (NATS nkey users with per-subject permissions, per-replica credentials, scoped keys,
model roots), from the same host, and shown refused.

One stack for the module (it starts in ~15 s); every test leaves it serving.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import httpx
import nats
import pytest
from nats.errors import NoServersError

from basalt import apikeys, bus, subjects
from basalt.pb import (
    deploy_pb2,
    events_pb2,
    kserve_pb2,
    kserve_pb2_grpc,
    runtime_pb2,
    runtime_pb2_grpc,
)
from basalt_tools.natsserver import free_ports

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]
MODEL = "tiny-llama"


@dataclass
class Stack:
    state: Path
    nats_url: str
    http: str
    mcm: str
    key: str
    management_key: str

    def creds(self, role: str) -> bus.NatsAuth:
        return bus.NatsAuth(str(self.state / "secrets" / "nats" / f"{role}.nk"))

    async def connect(self, role: str) -> nats.aio.client.Client:
        return await bus.connect(self.nats_url, name=f"attacker-as-{role}", auth=self.creds(role))

    def router_metrics(self) -> str:
        port = json.loads((self.state / "router.ready.json").read_text())["metrics_port"]
        return httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text

    def chat(self, key: str | None = None, model: str = MODEL) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"}
        body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        return httpx.post(f"{self.http}/v1/chat/completions", json=body, headers=headers,
                          timeout=30)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, tiny_model: Path) -> Iterator[Stack]:
    state = tmp_path_factory.mktemp("secure") / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "tiny-llama").symlink_to(tiny_model)
    ports = free_ports(4)
    cmd = [sys.executable, "-m", "basalt_cli", "up", "--engine", "sim", "--state-dir", str(state),
           "--nats-port", str(ports[0]), "--http-port", str(ports[1]),
           "--grpc-port", str(ports[2]), "--mcm-port", str(ports[3])]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()  # type: ignore[union-attr]
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        found = re.search(r"API key:\s+(bsk_\S+)", text)
        assert found, f"basalt up did not come up:\n{text}"
        yield Stack(state, f"nats://127.0.0.1:{ports[0]}", f"http://127.0.0.1:{ports[1]}",
                    f"http://127.0.0.1:{ports[3]}", found.group(1),
                    (state / "management-key").read_text().strip())
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _replicas(stack: Stack) -> list[events_pb2.ReplicaRecord]:
    nc = await stack.connect("admin")
    try:
        items = await bus.kv_items(await bus.replicas_bucket(nc))
        return [events_pb2.ReplicaRecord.FromString(v) for v in items.values()]
    finally:
        await nc.close()


async def _publish_refused(nc: nats.aio.client.Client, subject: str, data: bytes) -> bool:
    """Whether a JetStream publish (a KV put is one) was refused: no ack comes back."""
    try:
        await nc.jetstream(timeout=1.5).publish(subject, data)
    except Exception:  # noqa: BLE001 - timeout or no responders: the server dropped it
        return True
    return False


# -- NATS: no credentials, no entry ---------------------------------------------------------


async def test_a_client_without_credentials_cannot_connect(stack: Stack) -> None:
    with pytest.raises((NoServersError, nats.errors.Error, OSError)):
        await nats.connect(stack.nats_url, max_reconnect_attempts=0, allow_reconnect=False,
                           connect_timeout=2)


def test_a_service_without_credentials_cannot_start(stack: Stack, tmp_path: Path) -> None:
    log = tmp_path / "router.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "services.router", "--nats-url", stack.nats_url,
             "--http-port", "0", "--grpc-port", "0"], cwd=REPO, stdout=out,
            stderr=subprocess.STDOUT)
    try:
        code = proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        pytest.fail("a router without NATS credentials kept running")
    assert code != 0
    assert "refused this service's credentials" in log.read_text()


# -- NATS: each role may write only what it owns -------------------------------------------


@pytest.mark.parametrize("role", ["router", "runtime", "mcm"])
async def test_only_key_administration_can_mint_a_key(stack: Stack, role: str) -> None:
    key_id, key = apikeys.make_key()
    rec = apikeys.record_for(key_id, key, "forged", apikeys.MANAGEMENT)
    nc = await stack.connect(role)
    try:
        assert await _publish_refused(nc, f"$KV.{subjects.API_KEYS_BUCKET}.{key_id}",
                                      rec.SerializeToString())
    finally:
        await nc.close()
    r = await asyncio.to_thread(httpx.get, f"{stack.mcm}/v1/models", timeout=10,
                                headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 401


@pytest.mark.parametrize("role", ["router", "runtime", "admin"])
async def test_only_the_control_plane_writes_deployments(stack: Stack, role: str) -> None:
    """The python engine runs the model's own code: a forged deployment record naming a
    model.py of one's own would run it on the host."""
    rec = deploy_pb2.DeploymentRecord(id="evil", model="evil", desired_replicas=1,
                                      status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE)
    rec.spec.engine = "python"
    rec.spec.model_path = "/tmp/evil-model"
    nc = await stack.connect(role)
    try:
        for bucket in (subjects.DEPLOYMENTS_BUCKET, subjects.ENVIRONMENTS_BUCKET):
            assert await _publish_refused(nc, f"$KV.{bucket}.evil", rec.SerializeToString())
    finally:
        await nc.close()
    headers = {"Authorization": f"Bearer {stack.management_key}"}
    r = await asyncio.to_thread(httpx.get, f"{stack.mcm}/v1/models", headers=headers, timeout=10)
    models = r.json()["models"]
    assert "evil" not in json.dumps(models)


async def test_only_the_router_reads_prompts_on_the_bus(stack: Stack) -> None:
    """KV events carry token ids: the runtime, mcm and admin roles may not subscribe to them
    (nor to load reports); the router's role, subscribed the same way, gets them."""
    got: dict[str, list[bytes]] = {}
    conns = []
    for role in ("runtime", "mcm", "admin", "router"):
        nc = await stack.connect(role)
        conns.append(nc)
        got[role] = []

        async def cb(msg, role: str = role) -> None:  # type: ignore[no-untyped-def]
            got[role].append(msg.data)

        await nc.subscribe(subjects.KV_EVENTS_ALL, cb=cb)
        await nc.subscribe(subjects.LOAD_ALL, cb=cb)
    try:
        for _ in range(3):
            assert (await asyncio.to_thread(stack.chat)).status_code == 200
        await asyncio.sleep(1.5)  # load reports come every second
    finally:
        for nc in conns:
            await nc.close()
    assert got["router"], "the router's role receives events (the control)"
    assert got["runtime"] == got["mcm"] == got["admin"] == []


# -- forged replica records and events -------------------------------------------------------


class _Attacker(runtime_pb2_grpc.RuntimeServicer):
    def __init__(self) -> None:
        self.prompts = 0

    async def Generate(self, request, context):  # type: ignore[no-untyped-def]
        self.prompts += 1
        yield runtime_pb2.GenerateResponse(token_ids=[1])


async def test_a_forged_ready_replica_receives_no_prompt(stack: Stack) -> None:
    """With the runtime role's credentials (which may write replica records), a READY record
    pointing at one's own gRPC server: the router drops it, unsigned by that replica."""
    attacker = _Attacker()
    server = grpc.aio.server()
    runtime_pb2_grpc.add_RuntimeServicer_to_server(attacker, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    real = (await _replicas(stack))[0]
    nc = await stack.connect("runtime")
    try:
        forged = events_pb2.ReplicaRecord()
        forged.CopyFrom(real)
        forged.replica_id = "evil-replica"
        forged.grpc_address = f"127.0.0.1:{port}"
        forged.heartbeat_ts = time.time()
        forged.signature = b"\0" * 32
        assert not await _publish_refused(nc, f"$KV.{subjects.REPLICAS_BUCKET}.evil-replica",
                                          forged.SerializeToString()), "runtimes may write records"
        await asyncio.sleep(1.0)
        for _ in range(6):
            r = await asyncio.to_thread(stack.chat)
            assert r.status_code == 200 and r.headers["x-basalt-replica"] != "evil-replica"
    finally:
        await nc.jetstream().publish(f"$KV.{subjects.REPLICAS_BUCKET}.evil-replica", b"",
                                     headers={"KV-Operation": "DEL"})
        await nc.close()
        await server.stop(None)
    assert attacker.prompts == 0
    assert 'basalt_router_unauthentic_messages_total{kind="replica record"}' in stack.router_metrics()


async def test_forged_kv_events_do_not_reach_the_index(stack: Stack) -> None:
    real = (await _replicas(stack))[0]
    batch = events_pb2.KvEventBatch(replica_id=real.replica_id, seq=10**9, epoch=real.epoch)
    for i in range(200):
        ev = batch.events.add()
        ev.stored.block_hashes.append(i + 1)
        ev.stored.token_ids.extend(range(16))
    nc = await stack.connect("runtime")
    try:
        await nc.publish(subjects.kv_events(real.replica_id), batch.SerializeToString())
        await nc.flush()
    finally:
        await nc.close()
    await asyncio.sleep(0.5)
    assert 'kind="KV-event batch"' in stack.router_metrics()


# -- the runtime answers only the platform ---------------------------------------------------


async def test_a_replica_answers_nobody_but_the_platform(stack: Stack) -> None:
    real = (await _replicas(stack))[0]
    async with grpc.aio.insecure_channel(real.grpc_address) as ch:
        stub = runtime_pb2_grpc.RuntimeStub(ch)
        calls = [
            lambda md: stub.DumpKvState(runtime_pb2.DumpKvStateRequest(), metadata=md),
            lambda md: stub.LoadLora(runtime_pb2.LoadLoraRequest(
                lora_name="x", lora_path="/tmp"), metadata=md),
            lambda md: stub.UnloadLora(runtime_pb2.UnloadLoraRequest(lora_name="tiny-lora"),
                                       metadata=md),
            lambda md: _drain(stub.Generate(runtime_pb2.GenerateRequest(
                request_id="x", prompt_token_ids=[1, 2, 3]), metadata=md)),
            lambda md: kserve_pb2_grpc.GRPCInferenceServiceStub(ch).ServerMetadata(
                kserve_pb2.ServerMetadataRequest(), metadata=md),
        ]
        for md in (None, (("authorization", "Bearer " + "0" * 64),)):
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as e:
                    await call(md)
                assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        health = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest())
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    assert (await _replicas(stack))[0].lora_adapters == real.lora_adapters


async def _drain(call) -> None:  # type: ignore[no-untyped-def]
    async for _ in call:
        pass


# -- the deployments API starts code only from allowed roots, with allowed flags -------------


@pytest.mark.parametrize("body, param", [
    ({"id": "evil-py", "engine": "python", "model_path": "/tmp"}, "model_path"),
    ({"id": "evil-lora", "engine": "sim", "loras": [{"name": "x", "path": "/etc"}]},
     "loras[0].path"),
    ({"id": "evil-listen", "engine": "sim", "engine_args": {"grpc-host": "0.0.0.0"}},
     "engine_args.grpc-host"),
    ({"id": "evil-token", "engine": "sim", "engine_args": {"token": "x"}}, "engine_args.token"),
])
def test_deployments_start_code_only_from_allowed_roots(stack: Stack, body: dict, param: str) -> None:
    r = httpx.post(f"{stack.mcm}/v1/models/evil/deployments", json=body, timeout=10,
                   headers={"Authorization": f"Bearer {stack.management_key}"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["param"] == param


# -- scoped keys -----------------------------------------------------------------------------


async def _key(stack: Stack, scope: int, **limits: object) -> str:
    nc = await stack.connect("admin")
    try:
        return await apikeys.create(nc, "test", scope, **limits)
    finally:
        await nc.close()


def test_an_inference_key_cannot_manage_and_a_management_key_cannot_infer(stack: Stack) -> None:
    r = httpx.post(f"{stack.mcm}/v1/models/{MODEL}/deployments/tiny-llama-sim/scale",
                   json={"replicas": 0}, headers={"Authorization": f"Bearer {stack.key}"},
                   timeout=10)
    assert r.status_code == 401
    assert stack.chat(stack.management_key).status_code == 401
    assert stack.chat().status_code == 200


async def test_model_limited_expired_and_revoked_keys(stack: Stack) -> None:
    other = await _key(stack, apikeys.INFERENCE, models=["another-model"])
    r = await asyncio.to_thread(stack.chat, other)
    assert r.status_code == 403 and r.json()["error"]["code"] == "model_not_allowed"
    r = await asyncio.to_thread(httpx.get, f"{stack.http}/v1/models", timeout=10,
                                headers={"Authorization": f"Bearer {other}"})
    listed = r.json()["data"]
    assert listed == []
    mine = await _key(stack, apikeys.INFERENCE, models=[MODEL])
    assert (await asyncio.to_thread(stack.chat, mine)).status_code == 200

    expired = await _key(stack, apikeys.INFERENCE, expires_ts=time.time() - 1)
    assert (await asyncio.to_thread(stack.chat, expired)).status_code == 401

    manager = await _key(stack, apikeys.MANAGEMENT, models=["another-model"])
    r = await asyncio.to_thread(httpx.get, f"{stack.mcm}/v1/models/{MODEL}/deployments",
                                timeout=10, headers={"Authorization": f"Bearer {manager}"})
    assert r.status_code == 403

    revoked = await _key(stack, apikeys.INFERENCE)
    assert (await asyncio.to_thread(stack.chat, revoked)).status_code == 200
    out = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "basalt_cli", "keys", "revoke", apikeys.key_id_of(revoked) or "",
         "--nats-url", stack.nats_url, "--nats-creds", str(stack.creds("admin").creds)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    deadline = time.monotonic() + 8  # the verifiers' cache holds a verdict for 5 s
    while (await asyncio.to_thread(stack.chat, revoked)).status_code == 200:
        assert time.monotonic() < deadline, "a revoked key kept working"
        await asyncio.sleep(0.5)
    assert (await asyncio.to_thread(stack.chat, revoked)).status_code == 401


async def test_a_key_over_its_rate_gets_429_with_retry_after(stack: Stack) -> None:
    key = await _key(stack, apikeys.INFERENCE, rate_per_s=0.5)  # burst of 1
    codes = [(await asyncio.to_thread(stack.chat, key)) for _ in range(3)]
    assert codes[0].status_code == 200
    limited = [r for r in codes[1:] if r.status_code == 429]
    assert limited, [r.status_code for r in codes]
    assert int(limited[0].headers["retry-after"]) >= 1
    assert limited[0].json()["error"]["type"] == "rate_limit_error"
    r = await asyncio.to_thread(stack.chat)
    assert r.status_code == 200, "another key is not limited by this one"


def test_basalt_keys_list_shows_scopes_without_secrets(stack: Stack) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "basalt_cli", "keys", "list", "--nats-url", stack.nats_url,
         "--nats-creds", str(stack.creds("admin").creds)],
        cwd=REPO, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    assert "management" in out.stdout and "inference" in out.stdout
    assert stack.key.split(".", 1)[1] not in out.stdout


# -- bounded input on the HTTP door ----------------------------------------------------------


def test_failed_requests_do_not_break_the_next_on_the_same_connection(stack: Stack) -> None:
    """One keep-alive connection (http.client reuses it): bad JSON, wrong types, integers past
    their wire range and an unknown model each get a 4xx, and the connection serves on."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(stack.http)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=30)
    headers = {"Authorization": f"Bearer {stack.key}", "Content-Type": "application/json"}
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
    bad = [b"{not json", json.dumps({**chat, "max_tokens": "many"}).encode(),
           json.dumps({**chat, "max_tokens": 2**40}).encode(),
           json.dumps({**chat, "seed": -(2**70)}).encode(),
           json.dumps({**chat, "model": "no-such-model"}).encode()]
    try:
        conn.connect()
        sock = conn.sock
        for body in [*bad, json.dumps(chat).encode()]:
            conn.request("POST", "/v1/chat/completions", body=body, headers=headers)
            r = conn.getresponse()
            payload = json.loads(r.read())
            if body in bad:
                assert 400 <= r.status < 500, (body, r.status, payload)
                assert set(payload["error"]) >= {"message", "type"}
            else:
                assert r.status == 200, payload
            assert conn.sock is sock, "the connection was closed after a failed request"
    finally:
        conn.close()


def test_a_prompt_too_long_for_the_context_is_refused_before_tokenizing(stack: Stack) -> None:
    body = {"model": MODEL, "prompt": "word " * 20_000, "max_tokens": 1}  # 100k chars, 1024 ctx
    t0 = time.monotonic()
    r = httpx.post(f"{stack.http}/v1/completions", json=body, timeout=30,
                   headers={"Authorization": f"Bearer {stack.key}"})
    assert r.status_code == 400, r.text
    assert "cannot fit the model's context of 1024 tokens" in r.json()["error"]["message"]
    assert time.monotonic() - t0 < 5
