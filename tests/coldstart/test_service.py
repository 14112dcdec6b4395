"""The coldstart service for real: a nats-server, the service as a process, sources on disk and
on a local HTTP server. A revision is fetched once however many ask; an interrupted fetch
resumes; a corrupted file is fetched again and never served; eviction spares what is in use."""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from nats.aio.client import Client

from basalt import bus
from basalt.pb import deploy_pb2, weights_pb2
from basalt.weights import revision_key
from basalt.weightstream import node_record, request_fetch, weights_bucket
from basalt_tools.natsserver import NatsServer
from services.coldstart.sources import write_manifest
from services.mcm.weights import PrefetchFailed, WeightsClient
from tests.coldstart.httpserver import TestHTTPServer
from tests.coldstart_process import ColdstartProcess

pytestmark = pytest.mark.integration

MB = 1 << 20


@pytest.fixture(scope="module")
def nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp("nats-coldstart")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def client(nats: NatsServer) -> AsyncIterator[Client]:
    nc = await bus.connect(nats.url, name="test-coldstart")
    yield nc
    await nc.close()


def _node(tmp_path: Path) -> str:
    """A node name of this test alone (the stream and bucket are the module's)."""
    return f"n{time.monotonic_ns() % 10**9}"


@pytest.fixture
def service(nats: NatsServer, tmp_path: Path) -> Iterator[ColdstartProcess]:
    proc = ColdstartProcess(nats.url, tmp_path / "svc", node=_node(tmp_path), budget_gb=0.2)
    proc.start()
    yield proc
    proc.terminate()


def model_dir(root: Path, name: str, sizes: dict[str, int], seed: int = 0) -> Path:
    d = root / name
    d.mkdir(parents=True)
    for i, (path, size) in enumerate(sorted(sizes.items())):
        (d / path).write_bytes(os.urandom(size) if seed < 0 else
                               bytes([(seed + i) % 251]) * size)
    return d


async def _metric(proc: ColdstartProcess, name: str) -> float:
    async with httpx.AsyncClient() as http:
        text = (await http.get(proc.metrics_url)).text
    m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(m[1]) if m else 0.0


async def test_two_replicas_asking_at_once_fetch_the_revision_once(
        client: Client, service: ColdstartProcess, tmp_path: Path) -> None:
    src = model_dir(tmp_path, "m", {"a.safetensors": 6 * MB, "config.json": 100}, seed=-1)
    write_manifest(src)
    with TestHTTPServer(src) as http:
        source = deploy_pb2.WeightsSource(uri=http.url)
        weights = await WeightsClient.open(client)
        first, second = await asyncio.gather(
            weights.prefetch(service.node, source, "rep-1", 60),
            weights.prefetch(service.node, source, "rep-2", 60))
        gets = [r for r in http.requests if r.path == "a.safetensors" and r.method == "GET"]
    assert first.path == second.path
    assert len(gets) == 1, f"the large file was fetched {len(gets)} times: {gets}"
    assert (Path(first.path) / "a.safetensors").read_bytes() == (src / "a.safetensors").read_bytes()
    assert await _metric(service, "basalt_coldstart_fetched_bytes_total") == 6 * MB + 100
    # A third ask later finds it present: nothing fetched, and the start says so.
    third = await weights.prefetch(service.node, source, "rep-3", 60)
    assert third.fetched_bytes == 0 and third.tier in ("node", "warm")
    assert first.fetched_bytes == 6 * MB + 100 and first.tier == "source"


async def test_an_interrupted_transfer_resumes_where_it_stopped(
        client: Client, service: ColdstartProcess, tmp_path: Path) -> None:
    src = model_dir(tmp_path, "m", {"w.bin": 3 * MB}, seed=-1)
    write_manifest(src)
    with TestHTTPServer(src) as http:
        http.drop_after_bytes = MB  # the first response dies after 1 MiB
        got = await (await WeightsClient.open(client)).prefetch(
            service.node, deploy_pb2.WeightsSource(uri=http.url), "rep-1", 60)
        ranges = http.ranged("w.bin")
    assert (Path(got.path) / "w.bin").read_bytes() == (src / "w.bin").read_bytes()
    assert ranges and all(not r.startswith("bytes=0-") for r in ranges), ranges
    assert await _metric(service, "basalt_coldstart_fetched_bytes_total") <= 3 * MB + MB


async def test_a_file_corrupted_in_transit_is_never_served(
        client: Client, service: ColdstartProcess, tmp_path: Path) -> None:
    src = model_dir(tmp_path, "m", {"w.bin": MB, "config.json": 10}, seed=3)
    write_manifest(src)
    with TestHTTPServer(src) as http:
        http.corrupt = {"w.bin"}
        source = deploy_pb2.WeightsSource(uri=http.url)
        with pytest.raises(PrefetchFailed, match="corrupt"):
            await (await WeightsClient.open(client)).prefetch(service.node, source, "r", 60)
        assert not (service.cache_dir / "revisions" / revision_key(source)).exists()
        flipped = bytes(255 - b for b in (src / "w.bin").read_bytes())
        assert all(p.read_bytes() != flipped for p in (service.cache_dir / "blobs").iterdir())
        http.corrupt = set()  # the source is mended: the next launch's ask succeeds
        got = await (await WeightsClient.open(client)).prefetch(service.node, source, "r2", 60)
    assert (Path(got.path) / "w.bin").read_bytes() == (src / "w.bin").read_bytes()


async def test_a_blob_corrupted_on_disk_is_fetched_again(
        client: Client, service: ColdstartProcess, tmp_path: Path) -> None:
    src = model_dir(tmp_path, "m", {"w.bin": MB}, seed=5)
    source = deploy_pb2.WeightsSource(uri=str(src))
    weights = await WeightsClient.open(client)
    got = await weights.prefetch(service.node, source, "r1", 60)
    served = Path(got.path) / "w.bin"
    os.chmod(served, 0o644)
    rotten = bytearray(served.read_bytes())
    rotten[:3] = b"\x00\x01\x02"  # bit rot: same size, other bytes, a new mtime
    served.write_bytes(bytes(rotten))
    again = await weights.prefetch(service.node, source, "r2", 60)
    assert again.tier == "source" and again.fetched_bytes == MB
    assert (Path(again.path) / "w.bin").read_bytes() == (src / "w.bin").read_bytes()


async def test_eviction_takes_the_least_recently_used_revision_never_one_in_use(
        client: Client, nats: NatsServer, tmp_path: Path) -> None:
    proc = ColdstartProcess(nats.url, tmp_path / "svc", node=_node(tmp_path),
                            budget_gb=25 * MB / 1e9).start()
    try:
        weights = await WeightsClient.open(client)
        a, b, c = (deploy_pb2.WeightsSource(uri=str(model_dir(tmp_path, n, {"w.bin": 10 * MB},
                                                              seed=i)))
                   for i, n in enumerate("abc"))
        await weights.prefetch(proc.node, a, "replica-using-a", 60)  # pinned for its replica
        await request_fetch(client, proc.node, b)  # `basalt weights pull`: nobody uses it
        await _until_present(client, proc.node, b)
        await weights.prefetch(proc.node, c, "replica-using-c", 60)  # needs room: b goes
        held = {r.key for r in (await node_record(await weights_bucket(client), proc.node)).revisions
                if r.state == weights_pb2.WEIGHTS_STATE_PRESENT}
        assert held == {revision_key(a), revision_key(c)}
        # Nothing more can go: a fourth revision is refused with the reason, a and c stay.
        d = deploy_pb2.WeightsSource(uri=str(model_dir(tmp_path, "d", {"w.bin": 10 * MB}, 9)))
        with pytest.raises(PrefetchFailed, match="cache full"):
            await weights.prefetch(proc.node, d, "replica-using-d", 60)
        assert (proc.cache_dir / "revisions" / revision_key(a) / "w.bin").exists()
    finally:
        proc.terminate()


async def _until_present(nc: Client, node: str, source: deploy_pb2.WeightsSource) -> None:
    kv = await weights_bucket(nc)
    key = revision_key(source)
    for _ in range(300):
        rec = await node_record(kv, node)
        if rec and any(r.key == key and r.state == weights_pb2.WEIGHTS_STATE_PRESENT
                       for r in rec.revisions):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"{source.uri} never present on {node}")
