"""The router process: parse settings, wire NATS watchers, dispatcher and front doors (does I/O)."""

from __future__ import annotations

import asyncio
import json
import secrets
import signal
import sys
from pathlib import Path

import uvicorn

from basalt import apikeys, bus, deployfile, heap, subjects
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.pb import deploy_pb2
from basalt.secretfiles import read_secret
from services.router.core.deployments import DeploymentTable
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex
from services.router.core.types import PolicyConfig, RegionLatency

from .config import RouterSettings
from .dispatch import Channels, Dispatcher
from .kserve import start_kserve_server, stop_kserve_servers
from .openai_api import AppState, create_app
from .tokenizers import Tokenizers
from .watchers import StateWatcher
from .workers import listening_socket, supervise

log = blog.get_logger(__name__)


def _policy(s: RouterSettings) -> PolicyConfig:
    return PolicyConfig(
        overlap_weight=s.overlap_weight, busy_kv_usage=s.busy_kv_usage,
        busy_waiting=s.busy_waiting, lora_load_penalty=s.lora_load_penalty,
        region_penalty_per_ms=s.region_penalty_per_ms,
    )


async def _preload(watcher: StateWatcher, table: DeploymentTable, tokenizers: Tokenizers) -> None:
    """Load the tokenizers of the deployments known at start before answering: a restarted
    router's first requests then do not wait seconds for them (bounded: 20 s in all)."""
    try:
        await asyncio.wait_for(watcher.synced.wait(), 5.0)
    except TimeoutError:
        return
    async def load_all() -> None:
        for dep in table.deployments():
            await tokenizers.load(dep)  # a bad path is logged; answered per request later
    try:
        await asyncio.wait_for(load_all(), 20.0)
    except TimeoutError:
        log.warning("tokenizer_preload_slow")


async def _report_demand(nc, dispatcher: Dispatcher, table: DeploymentTable) -> None:  # type: ignore[no-untyped-def]
    """Every DEMAND_INTERVAL_S, one DemandReport per active deployment (the autoscaler's view
    of demand, also while a deployment has no replica)."""
    router_id = f"router-{secrets.token_hex(4)}"
    while True:
        await asyncio.sleep(subjects.DEMAND_INTERVAL_S)
        active = [d.id for d in table.deployments()
                  if d.status == deploy_pb2.DEPLOYMENT_STATUS_ACTIVE]
        try:
            for report in dispatcher.demand_reports(router_id, active):
                await nc.publish(subjects.demand(report.deployment_id),
                                 report.SerializeToString())
        except Exception as e:  # noqa: BLE001 - a NATS hiccup must not stop the reports
            log.warning("demand_report_failed", error=str(e))


async def run(s: RouterSettings) -> int:
    nc = await bus.connect(s.nats_url, name="router", auth=s.nats_auth())
    table = DeploymentTable()
    if s.deployments_file:
        parsed = deployfile.load(s.deployments_file, base_dir=Path(s.deployments_file).parent)
        for dep in parsed.deployments:
            table.put_deployment(dep.to_record())
        for env in parsed.environments:
            table.put_environment(env.to_record())
    fleet = Fleet(ttl_s=subjects.REPLICAS_TTL_S)
    index = PrefixIndex(seed=s.seed, max_blocks_per_replica=s.index_max_blocks_per_replica)
    secret = read_secret(s.replica_secret_file).encode() if s.replica_secret_file else b""
    if not secret:
        log.warning("replicas_unauthenticated", hint="give --replica-secret-file")
    channels = Channels(secret, warm_on_sight=True)
    dispatcher = Dispatcher(
        fleet, index, channels, region=s.region,
        latency=RegionLatency(remote_ms=s.remote_region_ms), base_policy=_policy(s),
        publish=lambda subject, data: asyncio.ensure_future(nc.publish(subject, data)),
        seed=s.seed,
    )
    tokenizers = Tokenizers(s.tokenize_process_chars)
    watcher = StateWatcher(nc, fleet, index, table, channels, changed=dispatcher.changed.set,
                           secret=secret, on_deployment=tokenizers.warm)
    await watcher.start()
    demand_task = asyncio.create_task(_report_demand(nc, dispatcher, table))
    verifier = None
    if s.auth:
        verifier = apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET))
    await _preload(watcher, table, tokenizers)
    app = create_app(AppState(table, dispatcher, tokenizers, verifier,
                              s.region_header.lower(), s.session_header.lower(),
                              s.max_body_bytes,
                              worker=str(s.worker_index) if s.worker_index >= 0 else "",
                              access_log=s.access_log))
    kserve_port = await start_kserve_server(s, table, dispatcher, tokenizers, verifier)
    metrics_port = serve_metrics(s.metrics_host, s.metrics_port)
    server = uvicorn.Server(uvicorn.Config(app, host=s.http_host, port=s.http_port,
                                           log_level="warning", lifespan="off"))
    # A worker shares its port with the others (SO_REUSEPORT); alone, uvicorn binds it.
    sockets = [listening_socket(s.http_host, s.http_port)] if s.worker_index >= 0 else None
    serve_task = asyncio.create_task(server.serve(sockets=sockets))
    while not server.started:
        if serve_task.done():
            return 1
        await asyncio.sleep(0.05)
    http_port = server.servers[0].sockets[0].getsockname()[1]
    tokenizers.start_helper(table.deployments())  # in the background, now that we serve
    heap.freeze()  # transformers and the tokenizers: no full-GC pause mid-stream
    metrics_at = f"{s.metrics_host}:{metrics_port}"
    log.info("router_ready", http=f"{s.http_host}:{http_port}", kserve_grpc=kserve_port,
             metrics=metrics_at, auth=s.auth, access_log=s.access_log)
    if s.ready_file:
        tmp = Path(s.ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps({"http_port": http_port, "grpc_port": kserve_port,
                                   "metrics_port": metrics_port, "metrics": metrics_at}))
        tmp.replace(s.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([serve_task, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    server.should_exit = True
    await serve_task
    await stop_kserve_servers()  # NOT_SERVING; in-flight KServe calls get a second
    demand_task.cancel()
    await watcher.stop()
    tokenizers.close()
    await channels.close()
    await nc.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    settings = parse(RouterSettings, args, "basalt router")
    blog.configure("router", settings.log_level)
    if settings.workers > 1:
        return supervise(settings, args)
    try:
        return asyncio.run(run(settings))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt router: {e}", file=sys.stderr)
        return 2
