"""The runtime process: parse settings, build the engine and adapters, serve, drain (does I/O)."""

from __future__ import annotations

import asyncio
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

from basalt import bus
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.pb import events_pb2, kserve_pb2, kserve_pb2_grpc, runtime_pb2, runtime_pb2_grpc
from services.runtime.core.engine import EngineInfo

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


def _launched_ts() -> float:
    try:
        return float(os.environ.get("BASALT_RUNTIME_LAUNCHED_TS", ""))
    except ValueError:
        return time.time()


class Replica:
    """Everything one replica process runs, wired together."""

    def __init__(self, settings: RuntimeSettings) -> None:
        self.settings = settings
        self.model_name = model_name(settings)
        self.replica_id = settings.replica_id or f"{settings.deployment}-{secrets.token_hex(4)}"
        self.epoch = secrets.token_hex(8)
        self.tokenizer = make_tokenizer(settings)
        self.engine = make_engine(settings, self.tokenizer)
        self.state = events_pb2.REPLICA_STATE_LOADING
        self.info: EngineInfo | None = None  # set once the engine has started
        self.grpc_address = ""
        self.metrics_address = ""
        self.tasks: list[asyncio.Task] = []
        # Cold start, for the autoscaler: from the provider's launch (else this process's
        # start) to the first READY.
        self.started_ts = _launched_ts()
        self.ready_ts = 0.0

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
            started_ts=self.started_ts,
            ready_ts=self.ready_ts,
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
        heartbeat = Heartbeat(bucket, self.record, s.heartbeat_interval, s.token)
        servicer = RuntimeServicer(
            self.engine, self.model_name, self.replica_id, kv, load, self.record,
            on_lora_change=lambda: self._spawn(heartbeat.beat()), lora_root=s.lora_root,
        )
        health_servicer = health.aio.HealthServicer()
        interceptors = [TokenInterceptor(s.token)] if s.token else []
        server = grpc.aio.server(interceptors=interceptors)
        runtime_pb2_grpc.add_RuntimeServicer_to_server(servicer, server)
        kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(
            KServeServicer(self.engine, self.model_name, self.tokenizer,
                           lambda: self.state == events_pb2.REPLICA_STATE_READY),
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

        if not await self._load(stop):  # SIGTERM while loading: leave at once, cleanly
            await self._close(server, heartbeat, nc)
            return 0
        self._spawn(kv.run(self.engine))
        self._spawn(load.run())
        self.state = events_pb2.REPLICA_STATE_READY
        self.ready_ts = time.time()
        await heartbeat.beat()
        for name in ("", *SERVICE_NAMES[:2]):
            await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
        self._write_ready_file()
        assert self.info is not None  # _load returned True: the engine started
        log.info("replica_ready", replica_id=self.replica_id, grpc=self.grpc_address,
                 kv_blocks=self.info.kv_blocks_total, block_size=self.info.kv_block_size)

        await stop.wait()
        await self._drain(servicer, health_servicer, heartbeat)
        await self._close(server, heartbeat, nc)
        return 0

    async def _load(self, stop: asyncio.Event) -> bool:
        """Start the engine and load LoRA adapters; False when a signal came first."""

        async def load() -> None:
            self.info = await self.engine.start()
            for name, path in self.settings.lora_map().items():
                await self.engine.load_lora(name, path)

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
    try:
        return asyncio.run(Replica(settings).run())
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt runtime: {e}", file=sys.stderr)
        return 2
