"""The autoscaler end to end against real processes: nats-server, mcm (local provider, sim
engine replicas), a router and one or two autoscaler processes.

What a user notices: a deployment at zero wakes on its first requests and serves them all,
then goes back to zero; `reject_on_full` answers 429 at once at zero but still wakes it; a
burst grows the count to its max and it falls back after the delay; killing the leading
autoscaler mid-burst hands over to the standby without a contradicting command.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client
from nats.js.errors import NotFoundError

from basalt import bus, subjects
from basalt.pb import deploy_pb2
from basalt_tools.natsserver import NatsServer
from tests.autoscaler_process import AutoscalerProcess
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, eventually, kill_runtimes
from tests.router_process import RouterProcess

pytestmark = pytest.mark.integration

MCM_FAST = ["--reconcile-period", "0.5", "--replica-grace", "10", "--stop-replicas-on-exit"]


@dataclass
class Stack:
    nats: NatsServer
    mcm: McmProcess
    router: RouterProcess
    workdir: Path


@pytest.fixture(scope="module")
def nats(request: pytest.FixtureRequest,
         tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A nats-server of this module's own: no other module's deployments or lease here."""
    store = tmp_path_factory.mktemp("nats-autoscaler-live")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def stack(nats: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    tmp = tmp_path_factory.mktemp("autoscaler-live")
    mcm = McmProcess(nats.url, tmp / "mcm", MCM_FAST)
    router = RouterProcess(nats.url, tmp, name="router-as")
    try:
        mcm.start()
        router.start()
        yield Stack(nats, mcm, router, tmp)
    finally:
        router.kill()
        if mcm.proc is not None and mcm.proc.poll() is None:
            try:
                mcm.terminate(timeout=20)
            except Exception:  # noqa: BLE001 - killed below anyway
                mcm.kill()
        mcm.kill()
        if mcm.owner:
            kill_runtimes(mcm.owner)


@pytest.fixture
async def nc(nats: NatsServer) -> AsyncIterator[Client]:
    client = await bus.connect(nats.url, name="test-autoscaler-live")
    yield client
    await client.close()


@pytest.fixture
def scalers(stack: Stack) -> Iterator[list[AutoscalerProcess]]:
    """Autoscaler processes a test starts (`_start_scaler`); all stopped afterwards (SIGTERM:
    the lease is released for the next test's autoscaler; SIGKILL if that fails)."""
    started: list[AutoscalerProcess] = []
    yield started
    for p in started:
        if p.alive():
            with contextlib.suppress(Exception):
                p.terminate(timeout=10)
        p.kill()


def _start_scaler(stack: Stack, started: list[AutoscalerProcess], holder: str,
                  lease_ttl: float = 3.0) -> AutoscalerProcess:
    p = AutoscalerProcess(stack.nats.url, stack.workdir, holder_id=holder, name=holder,
                          lease_ttl=lease_ttl)
    started.append(p)
    return p.start()


@pytest.fixture
async def http(stack: Stack) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=httpx.Timeout(90.0)) as client:
        yield client


@pytest.fixture
async def deployments(stack: Stack, http: httpx.AsyncClient) -> AsyncIterator[list[str]]:
    """Ids of deployments a test creates; their models deleted afterwards (mcm stops the
    replicas)."""
    made: list[str] = []
    yield made
    for dep in made:
        with contextlib.suppress(httpx.HTTPError):
            await http.delete(f"{stack.mcm.base_url}/v1/models/{dep}-model")


async def _deploy(stack: Stack, http: httpx.AsyncClient, made: list[str], dep: str,
                  replicas: int, autoscaling: dict, **kw: object) -> str:
    body = {"id": dep, "engine": "sim", "replicas": replicas,
            "engine_args": dict(FAST_SIM_ARGS), "autoscaling": autoscaling, **kw}
    r = await http.post(f"{stack.mcm.base_url}/v1/models/{dep}-model/deployments", json=body)
    assert r.status_code == 201, r.text
    made.append(dep)
    return f"{dep}-model"


async def _view(stack: Stack, http: httpx.AsyncClient, dep: str) -> dict:
    r = await http.get(f"{stack.mcm.base_url}/v1/models/{dep}-model/deployments/{dep}")
    assert r.status_code == 200, r.text
    return r.json()


async def _desired(stack: Stack, http: httpx.AsyncClient, dep: str) -> int:
    return int((await _view(stack, http, dep))["desired_replicas"])


async def _until_desired(stack: Stack, http: httpx.AsyncClient, dep: str, pred, timeout: float,
                         what: str) -> int:  # type: ignore[no-untyped-def]
    async def probe() -> int | None:
        n = await _desired(stack, http, dep)
        return n + 1 if pred(n) else None  # +1: zero is a valid answer
    return await eventually(probe, timeout, f"{dep}: {what}", every=0.25) - 1


async def _chat(http: httpx.AsyncClient, stack: Stack, model: str, max_tokens: int = 8,
                ) -> httpx.Response:
    return await http.post(stack.router.base_url + "/v1/chat/completions", json={
        "model": model, "messages": [{"role": "user", "content": "hello there"}],
        "max_tokens": max_tokens})


async def _until_routable_model(stack: Stack, http: httpx.AsyncClient, model: str) -> None:
    """The router knows the deployment (it came from the deployments KV): a 404 means not yet."""
    async def probe() -> bool:
        r = await http.get(stack.router.base_url + "/v1/models")
        return r.status_code == 200 and model in {m["id"] for m in r.json().get("data", [])}
    await eventually(probe, 15.0, f"router lists {model}", every=0.2)


async def _scale_commands(nc: Client, dep: str) -> list[deploy_pb2.ScaleCommand]:
    """Every ScaleCommand for `dep` in stream BASALT_SCALE, in stream order."""
    js = nc.jetstream()
    info = await js.stream_info(subjects.SCALE_STREAM)
    out = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        try:
            msg = await js.get_msg(subjects.SCALE_STREAM, seq)
        except NotFoundError:
            continue
        if msg.subject == subjects.scale(dep):
            out.append(deploy_pb2.ScaleCommand.FromString(msg.data))
    return out


def _flaps(seq: list[int]) -> bool:
    """True when a count goes down and then up again (or up, then down, then up)."""
    went_down = False
    for before, after in itertools.pairwise(seq):
        if after < before:
            went_down = True
        elif after > before and went_down:
            return True
    return False


async def _lease(nc: Client) -> deploy_pb2.AutoscalerLease | None:
    kv = await bus.kv_bucket(nc, subjects.AUTOSCALER_LEASE_BUCKET)
    try:
        entry = await kv.get(subjects.AUTOSCALER_LEASE_KEY)
    except Exception:  # noqa: BLE001 - not written yet
        return None
    return deploy_pb2.AutoscalerLease.FromString(entry.value) if entry.value else None


async def _leader_metric(http: httpx.AsyncClient, p: AutoscalerProcess) -> float:
    text = (await http.get(p.metrics_url)).text
    for line in text.splitlines():
        if line.startswith("basalt_autoscaler_leader "):
            return float(line.split()[1])
    return -1.0


# -- 1. scale to zero and wake ---------------------------------------------------------------


async def test_a_deployment_at_zero_wakes_serves_every_request_and_returns_to_zero(
        stack: Stack, http: httpx.AsyncClient, nc: Client, deployments: list[str],
        scalers: list[AutoscalerProcess]) -> None:
    _start_scaler(stack, scalers, "as-zero")
    model = await _deploy(stack, http, deployments, "zero", 0, {
        "min_replica": 0, "max_replica": 2, "autoscaling_window": 10, "scale_down_delay": 3,
        "concurrency_target": 4, "panic_window": 0})
    assert await _desired(stack, http, "zero") == 0, "it starts at zero"
    await _until_routable_model(stack, http, model)

    t0 = time.monotonic()
    results = await asyncio.gather(*(_chat(http, stack, model) for _ in range(8)))
    served = [r for r in results if r.status_code == 200]
    woke_in = time.monotonic() - t0
    assert len(served) == 8, [(r.status_code, r.text[:200]) for r in results]
    assert all(r.json()["usage"]["completion_tokens"] == 8 for r in served)
    assert await _desired(stack, http, "zero") >= 1
    print(f"8/8 served after a wake from zero in {woke_in:.1f}s")

    # No traffic: back to zero within window + delay + slack.
    t1 = time.monotonic()
    await _until_desired(stack, http, "zero", lambda n: n == 0, 10 + 3 + 12, "back to zero")
    print(f"desired back to 0 {time.monotonic() - t1:.1f}s after the last request")

    async def no_replica() -> bool:
        return (await _view(stack, http, "zero"))["replica_count"] == 0
    await eventually(no_replica, 15.0, "its replicas stop", every=0.25)
    cmds = await _scale_commands(nc, "zero")
    seq = [c.replicas for c in cmds]
    assert {c.source for c in cmds} == {"autoscaler"} and seq[0] >= 1 and seq[-1] == 0, seq
    assert not _flaps(seq), f"up, then down to zero, no flapping: {seq}"
    print(f"scale commands: {seq}")


# -- 2. reject_on_full at zero ---------------------------------------------------------------


async def test_reject_on_full_at_zero_answers_429_at_once_and_still_wakes(
        stack: Stack, http: httpx.AsyncClient, deployments: list[str],
        scalers: list[AutoscalerProcess]) -> None:
    _start_scaler(stack, scalers, "as-reject")
    model = await _deploy(stack, http, deployments, "reject", 0, {
        "min_replica": 0, "max_replica": 1, "autoscaling_window": 10, "scale_down_delay": 3,
        "concurrency_target": 1, "panic_window": 0},
        request_backpressure_policy="reject_on_full")
    await _until_routable_model(stack, http, model)
    t0 = time.monotonic()
    r = await _chat(http, stack, model)
    took = time.monotonic() - t0
    assert r.status_code == 429, r.text
    assert took < 2.0, f"429 took {took:.2f}s: not at once"
    await _until_desired(stack, http, "reject", lambda n: n >= 1, 10.0,
                         "the wake behind the 429 starts a replica")

    async def served() -> bool:
        return (await _chat(http, stack, model)).status_code == 200
    await eventually(served, 30.0, "served once the woken replica is ready", every=0.3)


# -- 3. burst 1 -> N and back ----------------------------------------------------------------


BURST = {"min_replica": 1, "max_replica": 3, "autoscaling_window": 10, "scale_down_delay": 4,
         "concurrency_target": 1, "panic_window": 6}


async def _hold(http: httpx.AsyncClient, stack: Stack, model: str, stop: asyncio.Event,
                counts: dict[str, int]) -> None:
    """Keep one long request in flight until `stop`."""
    while not stop.is_set():
        r = await _chat(http, stack, model, max_tokens=400)
        counts[str(r.status_code)] = counts.get(str(r.status_code), 0) + 1


async def test_a_burst_grows_to_max_and_falls_back_to_min_after_the_delay(
        stack: Stack, http: httpx.AsyncClient, nc: Client, deployments: list[str],
        scalers: list[AutoscalerProcess]) -> None:
    _start_scaler(stack, scalers, "as-burst")
    model = await _deploy(stack, http, deployments, "burst", 1, BURST)
    await _until_routable_model(stack, http, model)

    async def one_served() -> bool:
        return (await _chat(http, stack, model, max_tokens=2)).status_code == 200
    await eventually(one_served, 30.0, "the min replica serves", every=0.3)

    stop, counts = asyncio.Event(), dict[str, int]()
    load = [asyncio.create_task(_hold(http, stack, model, stop, counts)) for _ in range(6)]
    try:
        t0 = time.monotonic()
        await _until_desired(stack, http, "burst", lambda n: n >= 3, 10.0, "grows to 3")
        print(f"desired 3 after {time.monotonic() - t0:.1f}s of burst")
        await asyncio.sleep(3.0)
        assert await _desired(stack, http, "burst") == 3, "holds at max during the burst"
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
    assert set(counts) == {"200"}, counts
    t1 = time.monotonic()
    await _until_desired(stack, http, "burst", lambda n: n == 1, 10 + 4 + 15, "back to 1")
    print(f"desired back to 1 {time.monotonic() - t1:.1f}s after the burst")
    await asyncio.sleep(2.0)
    assert await _desired(stack, http, "burst") == 1, "never below min_replica"
    seq = [c.replicas for c in await _scale_commands(nc, "burst")]
    assert seq[-1] == 1 and max(seq) == 3 and not _flaps(seq), seq
    print(f"scale commands: {seq}")


# -- 4. failover mid-burst -------------------------------------------------------------------


async def test_killing_the_leader_mid_burst_hands_over_without_contradicting_commands(
        stack: Stack, http: httpx.AsyncClient, nc: Client, deployments: list[str],
        scalers: list[AutoscalerProcess]) -> None:
    ttl = 3.0
    a = _start_scaler(stack, scalers, "as-a", lease_ttl=ttl)
    b = _start_scaler(stack, scalers, "as-b", lease_ttl=ttl)
    procs = {a.holder: a, b.holder: b}

    async def one_leader() -> str | None:
        lease = await _lease(nc)
        if lease is None or lease.holder not in procs or lease.expires_ts < time.time():
            return None
        flags = {h: await _leader_metric(http, p) for h, p in procs.items()}
        return lease.holder if sorted(flags.values()) == [0.0, 1.0] and flags[lease.holder] else None
    leader_id = await eventually(one_leader, 10.0, "exactly one autoscaler leads")
    leader = procs[leader_id]
    standby = next(p for h, p in procs.items() if h != leader_id)

    model = await _deploy(stack, http, deployments, "failover", 1, BURST)
    await _until_routable_model(stack, http, model)

    async def one_served() -> bool:
        return (await _chat(http, stack, model, max_tokens=2)).status_code == 200
    await eventually(one_served, 30.0, "the min replica serves", every=0.3)

    stop, counts = asyncio.Event(), dict[str, int]()
    load = [asyncio.create_task(_hold(http, stack, model, stop, counts)) for _ in range(6)]
    try:
        await _until_desired(stack, http, "failover", lambda n: n >= 2, 10.0, "starts growing")
        assert leader.proc is not None
        os.killpg(leader.proc.pid, signal.SIGKILL)  # no lease release: it must expire
        leader.proc.wait()
        killed = time.monotonic()

        async def standby_leads() -> bool:
            lease = await _lease(nc)
            return (lease is not None and lease.holder == standby.holder
                    and await _leader_metric(http, standby) == 1.0)
        await eventually(standby_leads, ttl + 4.0, "the standby takes the lease")
        print(f"standby leads {time.monotonic() - killed:.1f}s after the kill -9")
        await _until_desired(stack, http, "failover", lambda n: n >= 3, 10.0,
                             "reaches its target under the new leader")
        await asyncio.sleep(3.0)
        assert await _desired(stack, http, "failover") == 3
        during = await _scale_commands(nc, "failover")
    finally:
        stop.set()
        await asyncio.gather(*load, return_exceptions=True)
    assert set(counts) == {"200"}, counts
    assert during, "the autoscaler sent commands"
    assert {c.source for c in during} == {"autoscaler"}, [c.source for c in during]
    counts_seq = [c.replicas for c in during]
    assert counts_seq == sorted(counts_seq), f"no scale down during the burst: {counts_seq}"
    assert all(x != y for x, y in itertools.pairwise(counts_seq)), \
        f"the successor does not repeat its predecessor's command: {counts_seq}"
    assert counts_seq[-1] == 3, counts_seq
    print(f"scale commands during the burst: {counts_seq}")

    # The new leader also brings it back down, and the whole history never flaps.
    await _until_desired(stack, http, "failover", lambda n: n == 1, 10 + 4 + 15,
                         "back to 1 under the new leader")
    cmds = await _scale_commands(nc, "failover")
    seq = [c.replicas for c in cmds]
    assert {c.source for c in cmds} == {"autoscaler"} and not _flaps(seq), seq
    print(f"scale commands in all: {seq}")
