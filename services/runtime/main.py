"""The runtime process: parse settings, build the engine and adapters, serve, drain (does I/O)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
import time
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from basalt import bus, heap, startfail
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.pb import events_pb2, kserve_pb2, kserve_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from services.runtime.core.engine import EngineInfo, GenerateInput, SamplingParams
from services.runtime.core.phases import PHASE_TITLES, StartPhases, format_bytes

from . import metrics, warm
from .config import RuntimeSettings
from .factory import make_engine, make_tokenizer, model_name
from .kserve import KServeServicer
from .publisher import Heartbeat, KvEventPublisher, LoadReporter
from .server import RuntimeServicer, TokenInterceptor

log = blog.get_logger(__name__)

SERVICE_NAMES = (
    runtime_pb2.DESCRIPTOR.services_by_name["Runtime"].full_name,
    kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name,
    health.SERVICE_NAME,
    reflection.SERVICE_NAME,
)


# The warm-up generation before READY (Replica._warm_up): which engines, its prompt (one
# token id every vocabulary has) and how long it may take.
WARM_UP_ENGINES = ("vllm", "trtllm")
WARM_UP_TOKEN = 1
WARM_UP_TIMEOUT_S = 120.0
# The exit code of a replica that could not start (its log's last line says why).
START_FAILED_EXIT = 3


class Replica:
    """Everything one replica process runs, wired together."""

    def __init__(self, settings: RuntimeSettings, warming: warm.Warming | None = None) -> None:
        # The start's phases: the control plane's stamps from the environment, ours as they
        # happen. Cold start, for the autoscaler: placement (else the provider's launch, else
        # this process's start) to the first READY.
        self.phases = StartPhases.from_env(os.environ, time.time())
        self.settings = settings
        self.warming = warming  # the weights being read into memory (started before the engine)
        self.model_name = model_name(settings)
        self.replica_id = settings.replica_id or f"{settings.deployment}-{secrets.token_hex(4)}"
        self.epoch = secrets.token_hex(8)
        self.tokenizer = make_tokenizer(settings)
        self.engine = make_engine(settings, self.tokenizer)
        self.state = events_pb2.REPLICA_STATE_LOADING
        # Where the start is (basalt/startfail.PHASES): named in the line a failure leaves.
        self.start_phase = "connect"
        self.info: EngineInfo | None = None  # set once the engine has started
        self.grpc_address = ""
        self.metrics_address = ""
        self.tasks: list[asyncio.Task] = []
        self.labels = {"model": self.model_name, "replica": self.replica_id}
        self._heartbeat: Heartbeat | None = None

    def record(self) -> events_pb2.ReplicaRecord:
        s = self.settings
        return events_pb2.ReplicaRecord(
            replica_id=self.replica_id,
            deployment=s.deployment,
            model=self.model_name,
            engine=s.engine.value,
            grpc_address=self.grpc_address,
            region=s.region,
            zone=s.zone,
            cluster=s.cluster,
            lora_adapters=sorted(self.engine.loras()),
            kv_block_size=self.info.kv_block_size if self.info else (s.block_size or 0),
            kv_blocks_total=self.info.kv_blocks_total if self.info else 0,
            state=self.state,
            owner=s.owner,
            max_model_len=self.info.max_model_len if self.info else s.max_model_len,
            epoch=self.epoch,
            metrics_address=self.metrics_address,
            started_ts=self.phases.started_ts,
            ready_ts=self.phases.ready_ts,
            start=self.phases.to_proto(),
            weights_revision=self.phases.weights_revision,
        )

    def _spawn(self, coro) -> None:
        self.tasks.append(asyncio.create_task(coro))

    async def run(self) -> int:
        s = self.settings
        nc = await bus.connect(s.nats_url, name=f"runtime-{self.replica_id}", auth=s.nats_auth())
        bucket = await bus.replicas_bucket(nc)
        kv = KvEventPublisher(nc, self.replica_id, self.epoch, s.token)
        load = LoadReporter(nc, self.replica_id, s.deployment, self.engine,
                            s.load_report_interval, self.model_name, s.token)
        heartbeat = self._heartbeat = Heartbeat(bucket, self.record, s.heartbeat_interval, s.token)
        servicer = RuntimeServicer(
            self.engine, self.model_name, self.replica_id, kv, load, self.record,
            on_lora_change=lambda: self._spawn(heartbeat.beat()), lora_root=s.lora_root,
            on_first_token=self._on_first_token,
        )
        health_servicer = health.aio.HealthServicer()
        interceptors = [TokenInterceptor(s.token)] if s.token else []
        server = grpc.aio.server(interceptors=interceptors)
        runtime_pb2_grpc.add_RuntimeServicer_to_server(servicer, server)
        kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeServicer(self.engine, self.model_name, self.tokenizer,
                           lambda: self.state == events_pb2.REPLICA_STATE_READY,
                           on_first_token=self._on_first_token),
            server,
        )
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        reflection.enable_server_reflection(SERVICE_NAMES, server)
        port = server.add_insecure_port(f"{s.grpc_host}:{s.grpc_port}")
        self.grpc_address = f"{s.advertise_host or s.grpc_host}:{port}"
        mport = serve_metrics(s.metrics_host, s.metrics_port)
        self.metrics_address = f"{s.advertise_host or s.metrics_host}:{mport}"
        stop = self._stop_on_signal()
        await server.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
        log.info("replica_loading", replica_id=self.replica_id, grpc=self.grpc_address,
                 engine=s.engine.value, model=self.model_name)
        self._spawn(heartbeat.run())

        try:
            loaded = await self._load(stop)
        except Exception as e:  # noqa: BLE001 - said in one line, then a clean exit
            await self._start_failed(e, server, heartbeat, nc)
            return START_FAILED_EXIT
        if not loaded:  # SIGTERM while loading: leave at once, cleanly
            await self._close(server, heartbeat, nc)
            return 0
        self._spawn(kv.run(self.engine))
        self._spawn(load.run())
        frozen = heap.freeze()  # the engine's start-up objects: no full-GC pause mid-stream
        log.info("heap_frozen", objects=frozen)
        self.state = events_pb2.REPLICA_STATE_READY
        self.phases.ready_ts = time.time()
        await heartbeat.beat()
        for name in ("", *SERVICE_NAMES[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file()
        assert self.info is not None  # _load returned True: the engine started
        log.info("replica_ready", replica_id=self.replica_id, grpc=self.grpc_address,
                 kv_blocks=self.info.kv_blocks_total, block_size=self.info.kv_block_size)
        self._report_phases()

        await stop.wait()
        await self._drain(servicer, health_servicer, heartbeat)
        await self._close(server, heartbeat, nc)
        return 0

    async def _load(self, stop: asyncio.Event) -> bool:
        """Start the engine and load LoRA adapters; False when a signal came first."""

        async def load() -> None:
            self.start_phase = "weights"
            await self._warm_weights()
            self.start_phase = "engine"
            self.info = await self.engine.start()
            self.phases.engine_ts = time.time()
            self.start_phase = "lora"
            for name, path in self.settings.lora_map().items():
                await self.engine.load_lora(name, path)
            self.start_phase = "warm_up"
            await self._warm_up()

        loading = asyncio.create_task(load())
        stopped = asyncio.create_task(stop.wait())
        await asyncio.wait([loading, stopped], return_when=asyncio.FIRST_COMPLETED)
        if loading.done():
            stopped.cancel()
            loading.result()  # a load failure raises here
            return True
        log.info("replica_stopped_while_loading", replica_id=self.replica_id)
        loading.cancel()
        return False

    async def _warm_up(self) -> None:
        """Ready means ready: one tiny generation (a 1-token prompt, 2 tokens out) before READY,
        so the first user request does not pay the engine's first-call costs. Three tokens
        never fill a KV block: nothing is hashed, cached or published as a routable prefix,
        and the sequence's blocks are freed when it finishes. Only real engines (vLLM,
        TensorRT-LLM) have such costs; a failure is logged, never fatal."""
        if self.engine.kind not in WARM_UP_ENGINES:
            return
        inp = GenerateInput(f"warmup-{self.replica_id}", [WARM_UP_TOKEN],
                            SamplingParams(max_tokens=2, temperature=0.0, ignore_eos=True))
        t0 = time.monotonic()
        try:
            async with asyncio.timeout(WARM_UP_TIMEOUT_S):
                async with contextlib.aclosing(self.engine.generate(inp)) as chunks:
                    tokens = sum([len(c.token_ids) async for c in chunks])
        except Exception as e:  # noqa: BLE001 - serving matters more than warming
            log.warning("engine_warm_up_failed", replica_id=self.replica_id,
                        error=str(e) or type(e).__name__)
            return
        log.info("engine_warmed_up", replica_id=self.replica_id, tokens=tokens,
                 seconds=round(time.monotonic() - t0, 3))

    async def _warm_weights(self) -> None:
        """The "loaded" phase: the weight files read into host memory before the engine
        starts (nothing to read, e.g. a sim without a model: the phase stays unset)."""
        if self.warming is None:
            return
        try:
            warmed = await self.warming.result()
        except OSError as e:  # a file gone or unreadable: the engine's own load will say more
            log.warning("weights_not_warmed", replica_id=self.replica_id, reason=str(e))
            return
        if warmed is None:
            return
        if warmed.skipped:
            log.info("weights_not_warmed", replica_id=self.replica_id, reason=warmed.skipped)
            return
        # When the reads ended (they overlap the engine's import, which counts as engine init).
        self.phases.mark_loaded(warmed.finished_ts, warmed.bytes, warmed.seconds)
        log.info("weights_warmed", replica_id=self.replica_id, files=warmed.files,
                 bytes=warmed.bytes, seconds=round(warmed.seconds, 3),
                 rate=f"{format_bytes(self.phases.load_bytes_per_s)}/s")

    def _report_phases(self) -> None:
        """At READY: the start's phases as metrics and one log line."""
        p = self.phases
        durations = p.durations()
        for name, seconds in durations.items():
            self._observe_phase(name, seconds)
        cold = p.cold_start_s()
        if cold is not None:
            metrics.COLD_START.labels(**self.labels).set(cold)
        if p.load_bytes_per_s:
            metrics.WEIGHTS_LOAD_RATE.labels(**self.labels).set(p.load_bytes_per_s)
            metrics.WEIGHTS_BYTES.labels(**self.labels).set(p.weights_bytes)
        log.info("replica_start_phases", at="ready", replica_id=self.replica_id,
                 deployment=self.settings.deployment, tier=p.tier,
                 fetched_bytes=p.fetched_bytes, weights_bytes=p.weights_bytes,
                 load_bytes_per_s=round(p.load_bytes_per_s), weights_revision=p.weights_revision,
                 cold_start_s=round(cold, 3) if cold is not None else None,
                 summary=p.summary(),
                 **{f"{name}_s": round(s, 3) for name, s in durations.items()})

    def _observe_phase(self, name: str, seconds: float) -> None:
        assert name in PHASE_TITLES
        metrics.START_PHASE.labels(**self.labels, phase=name).set(seconds)
        metrics.START_PHASE_HIST.labels(model=self.model_name, phase=name).observe(seconds)

    def _on_first_token(self) -> None:
        """The first token this replica sends (called once, by the servicer): stamp it, log it,
        and publish the record again."""
        if self.phases.first_token_ts:
            return
        p = self.phases
        p.first_token_ts = time.time()
        after_ready = p.durations().get("first_token")
        if after_ready is not None:
            self._observe_phase("first_token", after_ready)
        # (a key naming "token" would be redacted by basalt.log)
        log.info("replica_start_phases", at="first_token", replica_id=self.replica_id,
                 first_output_s=round(after_ready, 3) if after_ready is not None else None,
                 since_start_s=round(p.first_token_ts - p.started_ts, 3))
        if self._heartbeat is not None:
            self._spawn(self._heartbeat.beat())

    async def _start_failed(self, e: Exception, server: grpc.aio.Server, heartbeat: Heartbeat,
                            nc) -> None:  # type: ignore[no-untyped-def]
        """The start failed: the traceback once in the log, then the one marker line the
        control plane reads (basalt/startfail.py), then a clean shutdown (no second traceback
        from parts torn down with the event loop)."""
        log.error("replica_start_failed", replica_id=self.replica_id, phase=self.start_phase,
                  error=startfail.describe(e), exc_info=e)
        await self._close(server, heartbeat, nc)
        print(startfail.marker_line(self.start_phase, e), file=sys.stderr, flush=True)

    async def _close(self, server: grpc.aio.Server, heartbeat: Heartbeat, nc) -> None:  # type: ignore[no-untyped-def]
        await server.stop(grace=1.0)
        for task in self.tasks:
            task.cancel()
        try:
            await self.engine.shutdown()
        except Exception as e:  # noqa: BLE001 - shut down the rest regardless
            log.warning("engine_shutdown_failed", error=str(e))
        try:  # NATS may already be gone (a whole stack stopping): do not hang on it
            await asyncio.wait_for(heartbeat.deregister(self.replica_id), timeout=3)
            await asyncio.wait_for(nc.drain(), timeout=3)
        except Exception as e:  # noqa: BLE001 - NATS gone or slow: stop anyway
            log.warning("deregister_failed", error=str(e) or type(e).__name__)
        log.info("replica_stopped", replica_id=self.replica_id)

    def _write_ready_file(self) -> None:
        if self.settings.ready_file:
            from google.protobuf.json_format import MessageToDict

            path = Path(self.settings.ready_file)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(MessageToDict(self.record())))
            tmp.replace(path)  # readers never see half a file

    def _stop_on_signal(self) -> asyncio.Event:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        return stop

    async def _drain(self, servicer: RuntimeServicer, health_servicer, heartbeat: Heartbeat) -> None:
        """Stop taking work, let in-flight requests finish (up to drain_timeout), deregister."""
        log.info("replica_draining", replica_id=self.replica_id, inflight=servicer.inflight.count)
        servicer.inflight.draining = True
        self.state = events_pb2.REPLICA_STATE_DRAINING
        await health_servicer.enter_graceful_shutdown()
        try:
            await heartbeat.beat()
        except Exception as e:  # noqa: BLE001 - NATS away: drain anyway
            log.warning("drain_heartbeat_failed", error=str(e))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.settings.drain_timeout
        while servicer.inflight.count > 0 and loop.time() < deadline:
            await asyncio.sleep(0.05)
        if servicer.inflight.count:
            log.warning("drain_timeout", aborted=servicer.inflight.count)


async def _run(settings: RuntimeSettings, warming: warm.Warming | None) -> int:
    try:
        replica = Replica(settings, warming)
    except Exception as e:
        log.error("replica_start_failed", phase="settings", error=startfail.describe(e),
                  exc_info=e)
        print(startfail.marker_line("settings", e), file=sys.stderr, flush=True)
        return START_FAILED_EXIT
    return await replica.run()


def main(argv: list[str] | None = None) -> int:
    settings = parse(RuntimeSettings, sys.argv[1:] if argv is None else argv, "basalt runtime")
    blog.configure("runtime", settings.log_level)
    try:
        settings.lora_map()
    except ValueError as e:
        print(f"basalt runtime: {e}", file=sys.stderr)
        return 2
    if not settings.token:
        if settings.grpc_host not in bus.LOOPBACK and not settings.grpc_insecure:
            print(f"basalt runtime: refusing to listen on {settings.grpc_host} without a "
                  "credential (BASALT_RUNTIME_TOKEN) or --grpc-insecure", file=sys.stderr)
            return 2
        log.warning("runtime_without_credential", grpc_host=settings.grpc_host)
    root = settings.weights_root()
    # Started first, so the reads overlap importing the engine (Replica builds it).
    warming = warm.Warming(root) if settings.warm_weights and root else None
    try:
        return asyncio.run(_run(settings, warming))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"{startfail.MARK}connect: {e}", file=sys.stderr)
        return 2
    finally:
        if warming is not None:
            warming.stop()
