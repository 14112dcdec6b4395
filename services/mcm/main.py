"""The mcm process: parse settings, open the store, build the provider, run the deployments
API (with the dashboard and its traffic feed), the reconcile loop and the scale-command
consumer until SIGTERM (does I/O).

On exit, replicas are left running by default: the owner id is kept in `<state-dir>/owner`
and the provider's replica handles and logs (`<id>.log`, read by `basalt logs`) beside it, so
the next start on the same state dir adopts them (no duplicates, no orphans). `--stop-replicas-on-exit` (what `basalt up`
uses) stops every replica of this owner first, so nothing is left running.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import uvicorn
from nats.aio.client import Client

from basalt import apikeys, bus, subjects
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.secretfiles import read_secret

from .config import McmSettings, ProviderKind
from .core.health import ControlState
from .dashboard import Traffic, install
from .providers import LocalProvider, Provider, SimCloudProvider
from .reconciler import Reconciler, ReconcilerSettings
from .scale import ScaleConsumer
from .store import Store
from .weights import WeightsClient

log = blog.get_logger(__name__)


def load_owner(state_dir: Path, explicit: str = "") -> str:
    """The owner id: `explicit` if given, else the one kept in `<state_dir>/owner` (created
    on first start), so every start on one state dir owns the same replicas."""
    if explicit:
        return explicit
    path = state_dir / "owner"
    if path.exists():
        kept = path.read_text().strip()
        if kept:
            return kept
    owner = f"mcm-{secrets.token_hex(4)}"
    state_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(owner + "\n")
    tmp.replace(path)
    return owner


def build_provider(s: McmSettings, state_dir: Path) -> Provider:
    """The provider; its per-replica files (`<id>.log`, handles) go in the state dir."""
    if s.provider is ProviderKind.SIMCLOUD:
        return SimCloudProvider.from_file(Path(s.simcloud_config), state_dir,
                                          grace_s=s.replica_grace)
    return LocalProvider(state_dir, grace_s=s.replica_grace)


def runtime_env(s: McmSettings) -> dict[str, str]:
    """What every replica this control plane starts gets in its environment: the runtime
    role's NATS credentials and the NATS TLS settings (the token is added per replica)."""
    env = {"BASALT_RUNTIME_NATS_CREDS": os.path.abspath(s.runtime_nats_creds)
           if s.runtime_nats_creds else ""}
    if s.nats_tls_ca:
        env["BASALT_RUNTIME_NATS_TLS_CA"] = os.path.abspath(s.nats_tls_ca)
    if s.nats_insecure:
        env["BASALT_RUNTIME_NATS_INSECURE"] = "true"
    return {k: v for k, v in env.items() if v}


def build_app(store: Store, nc: Client, verifier: apikeys.KeyVerifier | None,
              cluster_status: Callable[[], list[dict[str, Any]]],
              model_roots: list[str] | None = None,
              health: Callable[[], ControlState] | None = None,
              traffic: Traffic | None = None) -> Any:
    """The deployments API, with the dashboard and the traffic routes when `traffic` is
    given; a bare /health app while `services.mcm.api` is not there."""
    try:
        from .api import create_app
    except ImportError:
        log.warning("deployments_api_missing")
        from fastapi import FastAPI

        app = FastAPI(title="basalt mcm")
        app.get("/health")(lambda: {"status": "ok"})
        return app
    app = create_app(store, nc=nc, verifier=verifier, cluster_status=cluster_status,
                     model_roots=model_roots, health=health)
    if traffic is not None:
        install(app, traffic, verifier)
    return app


async def _poke_on_deployment_changes(store: Store, reconciler: Reconciler) -> None:
    """Tick at once when a deployment is written, not at the end of the period."""
    while True:
        watcher = None
        try:
            watcher = await store.deployments.watchall()
            async for _entry in watcher:
                reconciler.poke()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - NATS restarting: watch again
            log.warning("deployments_watch_restart", error=str(e))
            await asyncio.sleep(1.0)
        finally:  # an abandoned watch would hold up the connection's drain at exit
            if watcher is not None:
                with contextlib.suppress(Exception):
                    await watcher.stop()


async def _serve(app: Any, s: McmSettings) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    server = uvicorn.Server(uvicorn.Config(app, host=s.http_host, port=s.http_port,
                                           log_level="warning", lifespan="off"))
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise SystemExit(f"basalt mcm: cannot serve on {s.http_host}:{s.http_port}")
        await asyncio.sleep(0.05)
    return server, task, server.servers[0].sockets[0].getsockname()[1]


def _write_ready(path: str, info: dict[str, object]) -> None:
    if path:
        tmp = Path(path).with_suffix(".tmp")
        tmp.write_text(json.dumps(info))
        tmp.replace(path)


async def _disconnect(nc: Client) -> None:
    try:
        await asyncio.wait_for(nc.drain(), 10.0)
    except Exception as e:  # noqa: BLE001 - NATS already gone (e.g. stopped first)
        log.warning("nats_drain_failed", error=str(e) or type(e).__name__)
        with contextlib.suppress(Exception):
            await nc.close()


async def run(s: McmSettings) -> int:
    state_dir = Path(s.state_dir).resolve()
    owner = load_owner(state_dir, s.owner)
    provider = build_provider(s, state_dir)
    secret = read_secret(s.replica_secret_file).encode() if s.replica_secret_file else b""
    if not secret:
        log.warning("replicas_without_credentials", hint="give --replica-secret-file")
    if not s.model_roots:
        log.warning("model_roots_unrestricted", hint="give --model-roots")
    nc = await bus.connect(s.nats_url, name="mcm", auth=s.nats_auth())
    store = await Store.open(nc)
    reconciler = Reconciler(
        store, await bus.replicas_bucket(nc), provider, owner,
        ReconcilerSettings(nats_url=s.nats_url, block_ttl_s=s.block_ttl,
                           launch_timeout_s=s.launch_timeout, stale_after_s=s.stale_after,
                           replica_secret=secret, runtime_env=runtime_env(s),
                           backoff_base_s=s.backoff_base, max_failures=s.max_start_failures),
        weights=await WeightsClient.open(nc),
    )
    scale = await ScaleConsumer.open(nc, store, on_applied=lambda _cmd: reconciler.poke())
    verifier = None
    if s.auth:
        verifier = apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET))
    traffic = Traffic(nc)
    await traffic.start()
    app = build_app(store, nc, verifier, reconciler.cluster_status, s.model_roots or None,
                    health=reconciler.deployment_health, traffic=traffic)
    server, serve_task, http_port = await _serve(app, s)
    loops = [asyncio.create_task(reconciler.run(s.reconcile_period)),
             asyncio.create_task(scale.run())]
    watch = asyncio.create_task(_poke_on_deployment_changes(store, reconciler))
    metrics_port = serve_metrics(s.metrics_host, s.metrics_port)
    log.info("mcm_ready", http=f"{s.http_host}:{http_port}", owner=owner,
             provider=s.provider.value, state_dir=str(state_dir), metrics=metrics_port)
    _write_ready(s.ready_file, {"http_port": http_port, "metrics_port": metrics_port,
                                "owner": owner})
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await asyncio.wait([serve_task, *loops, asyncio.create_task(stop.wait())],
                       return_when=asyncio.FIRST_COMPLETED)
    log.info("mcm_stopping", stop_replicas=s.stop_replicas_on_exit)
    server.should_exit = True
    scale.request_stop()
    reconciler.request_stop()
    watch.cancel()
    # A tick or fetch waiting on a NATS that is gone would hold the exit up: cancel it (both
    # are safe to cut at an await; see scale.py on a command cut between its two writes).
    _, late = await asyncio.wait(loops, timeout=2.0)
    for task in late:
        task.cancel()
    await asyncio.gather(serve_task, watch, *loops, return_exceptions=True)
    await reconciler.close(stop_replicas=s.stop_replicas_on_exit)
    await traffic.stop()
    await _disconnect(nc)
    log.info("mcm_stopped")
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = parse(McmSettings, sys.argv[1:] if argv is None else argv, "basalt mcm")
    blog.configure("mcm", settings.log_level)
    try:
        return asyncio.run(run(settings))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt mcm: {e}", file=sys.stderr)
        return 2
