"""A replica's start phases: the pure core, the weights warmer on real files, and a real sim
runtime process that records them in its replica record."""

from __future__ import annotations

import asyncio
import os
import threading
import time
from pathlib import Path

import grpc
import pytest

from basalt import bus
from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from basalt_cli.ctl import cold_start, replica_phases
from basalt_tools.natsserver import NatsServer
from services.runtime import warm
from services.runtime.config import EngineKind, RuntimeSettings
from services.runtime.core.phases import StartPhases, format_bytes
from services.runtime.engines.python_model import PythonModelEngine
from tests.runtime_process import RuntimeProcess

T0 = 1_700_000_000.0
ENV = {
    "BASALT_START_PLACED_TS": str(T0),
    "BASALT_START_FETCHED_TS": str(T0 + 3.0),
    "BASALT_START_FETCHED_BYTES": "2400000000",
    "BASALT_START_TIER": "source",
    "BASALT_START_WEIGHTS_REVISION": "sha256:abc",
    "BASALT_RUNTIME_LAUNCHED_TS": str(T0 + 3.5),
}


def _full() -> StartPhases:
    p = StartPhases.from_env(ENV, now=T0 + 4)
    p.mark_loaded(T0 + 5.6, 2_400_000_000, 2.1)
    p.engine_ts, p.ready_ts, p.first_token_ts = T0 + 43.8, T0 + 43.9, T0 + 44.3
    return p


# -- core ------------------------------------------------------------------------------------


def test_from_env_reads_every_stamp() -> None:
    p = StartPhases.from_env(ENV, now=T0 + 99)
    assert (p.placed_ts, p.fetched_ts, p.launched_ts) == (T0, T0 + 3.0, T0 + 3.5)
    assert (p.fetched_bytes, p.tier, p.weights_revision) == (2_400_000_000, "source", "sha256:abc")
    assert p.started_ts == T0, "cold start begins at placement, so it includes the fetch"


@pytest.mark.parametrize("bad", ["", "x", "nan", "inf", "-5", "1e999"])
def test_bad_env_values_are_zero(bad: str) -> None:
    env = {k: bad for k in ENV if k != "BASALT_RUNTIME_LAUNCHED_TS"}
    env["BASALT_START_FETCHED_BYTES"] = bad
    p = StartPhases.from_env(env, now=T0)
    assert (p.placed_ts, p.fetched_ts, p.fetched_bytes) == (0.0, 0.0, 0)
    assert p.launched_ts == T0, "no launch stamp: this process's start"
    assert p.started_ts == T0


def test_no_env_keeps_todays_cold_start() -> None:
    p = StartPhases.from_env({}, now=T0)
    p.engine_ts, p.ready_ts = T0 + 2, T0 + 2.5
    assert p.started_ts == T0 and p.cold_start_s() == 2.5
    assert p.durations() == {"engine_init": 2.0, "ready": 0.5}
    assert p.summary() == "engine init 2.0s · ready 0.5s (cold start 2.5s)"


def test_durations_in_start_order() -> None:
    d = _full().durations()
    assert list(d) == ["fetch", "launch", "load", "engine_init", "ready", "first_token"]
    expect = {"fetch": 3.0, "launch": 0.5, "load": 2.1, "engine_init": 38.2, "ready": 0.1,
              "first_token": 0.4}
    assert d == pytest.approx(expect, abs=1e-6)


def test_clock_skew_is_clamped() -> None:
    p = StartPhases(placed_ts=T0 + 1, launched_ts=T0)  # control plane's clock ahead
    assert p.durations() == {"launch": 0.0}


def test_summary_line() -> None:
    assert _full().summary() == (
        "fetch 3.0s (source, 2.4 GB) · launch 0.5s · load 2.1s (2.4 GB @ 1.1 GB/s) · "
        "engine init 38.2s · ready 0.1s (cold start 43.9s) · first token 0.4s after ready")
    assert StartPhases().summary() == "-"


def test_mark_loaded_without_bytes_leaves_the_phase_unset() -> None:
    p = StartPhases(launched_ts=T0)
    p.mark_loaded(T0 + 1, 0, 0.5)
    assert p.loaded_ts == 0 and "load" not in p.durations()


def test_to_proto_and_back_through_json() -> None:
    from google.protobuf.json_format import MessageToDict

    p = _full()
    msg = p.to_proto()
    assert isinstance(msg, events_pb2.StartPhases)
    assert msg.tier == "source" and msg.weights_bytes == 2_400_000_000
    for kw in ({}, {"preserving_proto_field_name": True}):
        back = StartPhases.from_dict(MessageToDict(msg, **kw), "sha256:abc")
        assert back == p


@pytest.mark.parametrize("n, text", [(0, "0 B"), (999, "999 B"), (1500, "1.5 kB"),
                                     (2_400_000_000, "2.4 GB"), (5e15, "5000.0 TB")])
def test_format_bytes(n: float, text: str) -> None:
    assert format_bytes(n) == text


def test_cli_cold_start_reads_the_newest_ready_replica() -> None:
    old = {"state": "ready", "start": {"placedTs": T0, "readyTs": T0 + 40}}
    new = {"state": "ready", "start": {"placed_ts": T0 + 100, "ready_ts": T0 + 112.34}}
    loading = {"state": "loading", "start": {"placedTs": T0 + 200}}
    assert cold_start([old, new, loading]) == "12.3s"
    assert cold_start([loading]) == "-" and cold_start([]) == "-"
    legacy = {"state": "ready", "started_ts": T0, "ready_ts": T0 + 7}  # a view without `start`
    assert replica_phases(legacy).cold_start_s() == 7.0


# -- warm.py on real files -------------------------------------------------------------------


def _write(path: Path, size: int) -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    data = os.urandom(size)
    path.write_bytes(data)
    return data


def test_weight_files_finds_only_weights(tmp_path: Path) -> None:
    for name in ("a.safetensors", "sub/b.bin", "c.pt", "d.pth", "e.gguf"):
        _write(tmp_path / name, 10)
    for name in ("config.json", "tokenizer.json", "model.safetensors.index.json"):
        _write(tmp_path / name, 10)
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "a.safetensors")  # an HF snapshot
    (tmp_path / "dangling.bin").symlink_to(tmp_path / "gone")
    names = [p.relative_to(tmp_path).as_posix() for p in warm.weight_files(tmp_path)]
    assert names == ["a.safetensors", "c.pt", "d.pth", "e.gguf", "link.safetensors", "sub/b.bin"]
    assert warm.weight_files("") == [] and warm.weight_files(tmp_path / "nope") == []


def test_segments_cover_each_file_exactly() -> None:
    got = list(warm.segments([(Path("a"), 10), (Path("b"), 0), (Path("c"), 4)], segment=4))
    assert got == [(Path("a"), 0, 4), (Path("a"), 4, 4), (Path("a"), 8, 2), (Path("c"), 0, 4)]


def test_read_files_reads_every_byte(tmp_path: Path) -> None:
    sizes = [3 * (1 << 20) + 17, 1, 0, 5 << 20]
    files = [tmp_path / f"w{i}.safetensors" for i in range(len(sizes))]
    for f, n in zip(files, sizes):
        _write(f, n)
    out = warm.read_files(files, threads=3, chunk=1 << 20)
    assert out.bytes == sum(sizes) and out.files == 4 and out.seconds >= 0
    assert out.finished_ts <= time.time()


def test_read_files_stops_when_asked(tmp_path: Path) -> None:
    f = tmp_path / "w.bin"
    _write(f, 1 << 20)
    stop = threading.Event()
    stop.set()
    assert warm.read_files([f], stop=stop).bytes == 0


def test_warm_returns_bytes_and_seconds(tmp_path: Path) -> None:
    _write(tmp_path / "model.safetensors", 2 << 20)
    out = warm.warm(tmp_path)
    assert out is not None and out.bytes == 2 << 20 and not out.skipped
    assert warm.warm(tmp_path / "empty-or-missing") is None


async def test_warming_runs_on_its_own_thread(tmp_path: Path) -> None:
    _write(tmp_path / "model.safetensors", 2 << 20)
    out = await warm.Warming(tmp_path).result()
    assert out is not None and out.bytes == 2 << 20
    stopped = warm.Warming(tmp_path)
    stopped.stop()
    assert (await stopped.result()) is not None  # ends early; never hangs


def test_weights_root_per_engine() -> None:
    py = RuntimeSettings(engine=EngineKind.PYTHON, model="/m", weights_dir="/cache/rev")
    assert py.weights_root() == "/cache/rev"
    assert RuntimeSettings(engine=EngineKind.PYTHON, model="/m").weights_root() == "/m"
    assert RuntimeSettings(engine=EngineKind.SIM, model="/m", weights_dir="/x").weights_root() == "/m"
    assert RuntimeSettings(engine=EngineKind.SIM).weights_root() == ""


async def test_python_model_gets_weights_dir(tmp_path: Path) -> None:
    model = tmp_path / "m" / "model"
    model.mkdir(parents=True)
    (model / "model.py").write_text(
        "class Model:\n"
        "    def __init__(self, weights_dir=None):\n"
        "        self.weights_dir = weights_dir\n"
        "    def predict(self, x):\n"
        "        return str(self.weights_dir)\n")
    engine = PythonModelEngine(tmp_path / "m", "m", tmp_path / "cache")
    await engine.start()
    try:
        assert [x async for x in engine.predict({})] == [str(tmp_path / "cache")]
    finally:
        await engine.shutdown()


# -- a real sim runtime ----------------------------------------------------------------------


@pytest.mark.integration
async def test_sim_replica_records_its_start_phases(
        nats_server: NatsServer, nc, tmp_path: Path) -> None:
    model = tmp_path / "fake-model"
    _write(model / "model.safetensors", 3 << 20)
    now = time.time()
    env = {"BASALT_START_PLACED_TS": str(now - 2.0), "BASALT_START_FETCHED_TS": str(now - 1.0),
           "BASALT_START_FETCHED_BYTES": str(3 << 20), "BASALT_START_TIER": "node",
           "BASALT_START_WEIGHTS_REVISION": "rev-1", "BASALT_RUNTIME_LAUNCHED_TS": str(now)}
    os.environ.update(env)  # the child inherits these; removed again below
    try:
        proc = RuntimeProcess(nats_server.url, tmp_path / "rt", replica_id="sim-phases",
                              extra=["--model", str(model), "--sim-time-scale", "0.05",
                                     "--heartbeat-interval", "0.5"]).start()
    finally:
        for k in env:
            os.environ.pop(k, None)
    try:
        start = proc.record["start"]
        assert start["placedTs"] == pytest.approx(now - 2.0)
        assert start["fetchedTs"] == pytest.approx(now - 1.0)
        assert start["tier"] == "node" and int(start["fetchedBytes"]) == 3 << 20
        assert int(start["weightsBytes"]) == 3 << 20 and start["loadBytesPerS"] > 0
        assert now <= start["loadedTs"] <= start["engineTs"] <= start["readyTs"]
        assert "firstTokenTs" not in start
        assert proc.record["weightsRevision"] == "rev-1"
        assert proc.record["startedTs"] == pytest.approx(now - 2.0), "placement starts the clock"

        async with grpc.aio.insecure_channel(proc.address) as ch:
            req = runtime_pb2.GenerateRequest(prompt_token_ids=[5, 6, 7],
                                              sampling=runtime_pb2.SamplingParams(max_tokens=3))
            out = [r async for r in runtime_pb2_grpc.RuntimeStub(ch).Generate(req)]
        assert sum(len(r.token_ids) for r in out) == 3

        bucket = await bus.replicas_bucket(nc)
        deadline = time.monotonic() + 5
        while True:
            rec = events_pb2.ReplicaRecord.FromString((await bucket.get("sim-phases")).value)
            if rec.start.first_token_ts or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.1)
        assert rec.start.first_token_ts >= rec.start.ready_ts > 0
        assert rec.start.placed_ts == pytest.approx(now - 2.0) and rec.weights_revision == "rev-1"
        log = proc.log_tail(20000)
        assert '"replica_start_phases"' in log and '"at": "first_token"' in log
    finally:
        proc.kill()
