"""The autoscaler process: hold the leader lease, decide every tick, send scale commands,
record each decision (does I/O; the rules are in core/).

Every tick (1 s by default): renew the lease; as the leader, build each autoscaled
deployment's inputs, run the planner, write each changed decision to bucket
`basalt_autoscaler` and then publish its `ScaleCommand` (source "autoscaler"). A wake from a
router runs a tick at once instead of waiting for the next one. A standby only watches; when it
takes the lease it first reads every decision its predecessor wrote, so it neither repeats nor
contradicts a command.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from pathlib import Path

from nats.aio.client import Client
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from basalt import bus, subjects
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.pb import deploy_pb2
from basalt.scalestream import publish_scale
from basalt.secretfiles import read_secret

from .config import AutoscalerSettings
from .core.planner import DeploymentInput, Planner, ScaleTo
from .inputs import Inputs
from .lease import Lease

log = blog.get_logger(__name__)

DESIRED = Gauge("basalt_autoscaler_desired_replicas", "The autoscaler's decision", ["deployment"])
READY = Gauge("basalt_autoscaler_ready_replicas", "Ready replicas seen", ["deployment"])
PANIC = Gauge("basalt_autoscaler_panic", "1 while the deployment is in panic mode", ["deployment"])
DECISIONS = Counter("basalt_autoscaler_decisions_total", "Scale commands sent, by reason",
                    ["deployment", "reason"])
LEADER = Gauge("basalt_autoscaler_leader", "1 while this process holds the lease")


class Autoscaler:
    def __init__(self, nc: Client, inputs: Inputs, lease: Lease, decisions: KeyValue,
                 holder: str) -> None:
        self.nc = nc
        self.inputs = inputs
        self.lease = lease
        self.decisions = decisions
        self.holder = holder
        self.planner = Planner()
        self._leading = False
        self._written: dict[str, bytes] = {}
        self.poke = asyncio.Event()
        inputs.on_wake = lambda _dep: self.poke.set()

    async def run(self, tick_s: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.tick()
            self.poke.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wait(stop), timeout=tick_s)

    async def _wait(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(self.poke.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def tick(self) -> None:
        now = time.time()
        held = await self.lease.renew(now)
        LEADER.set(1 if held else 0)
        if not held:
            self._leading = False
            return
        if not self._leading:
            await self._take_over()
            self._leading = True
        inputs = self.inputs.tick_inputs(now)
        effects = self.planner.on_tick(now, inputs)
        await self._record(now, inputs)
        for effect in effects:
            if not self.lease.acting(time.time()):
                log.warning("lease_lost_mid_tick", deployment=effect.deployment_id)
                return
            await self._send(effect)

    async def _take_over(self) -> None:
        """Start from the decisions the last leader wrote."""
        self.planner = Planner()
        self._written.clear()
        for key, value in (await bus.kv_items(self.decisions)).items():
            try:
                rec = deploy_pb2.AutoscalerDecision.FromString(value)
            except Exception as e:  # noqa: BLE001 - unreadable: decided afresh
                log.warning("decision_unreadable", deployment=key, error=str(e))
                continue
            self.planner.restore(rec)
            self._written[key] = value
        log.info("autoscaler_leading", holder=self.holder, restored=len(self._written))

    async def _record(self, now: float, inputs: dict[str, DeploymentInput]) -> None:
        """Write each deployment's decision when it changed (before its command goes out)."""
        for dep_id, inp in inputs.items():
            snap = self.planner.snapshot(dep_id, self.holder, now, inp.tick.ready)
            if snap is None:
                continue
            DESIRED.labels(deployment=dep_id).set(snap.desired)
            READY.labels(deployment=dep_id).set(inp.tick.ready)
            PANIC.labels(deployment=dep_id).set(1 if snap.panic else 0)
            key = snap.SerializeToString()
            snap.ts = 0.0
            stable = snap.SerializeToString()
            if self._written.get(dep_id) == stable:
                continue
            try:
                await self.decisions.put(dep_id, key)
                self._written[dep_id] = stable
            except Exception as e:  # noqa: BLE001 - retried next tick
                log.warning("decision_write_failed", deployment=dep_id, error=str(e))

    async def _send(self, effect: ScaleTo) -> None:
        try:
            cmd = await publish_scale(self.nc, effect.deployment_id, effect.replicas, "autoscaler")
        except Exception as e:  # noqa: BLE001 - the planner resends on drift
            log.warning("scale_publish_failed", deployment=effect.deployment_id, error=str(e))
            return
        DECISIONS.labels(deployment=effect.deployment_id, reason=effect.reason).inc()
        log.info("autoscale", deployment=effect.deployment_id, replicas=effect.replicas,
                 reason=effect.reason, detail=effect.detail, command_id=cmd.command_id)


async def run(s: AutoscalerSettings) -> int:
    nc = await bus.connect(s.nats_url, name="autoscaler", auth=s.nats_auth())
    holder = s.holder_id or f"autoscaler-{secrets.token_hex(4)}"
    secret = read_secret(s.replica_secret_file).encode() if s.replica_secret_file else b""
    inputs = Inputs(nc, secret)
    await inputs.start()
    lease = Lease(await bus.kv_bucket(nc, subjects.AUTOSCALER_LEASE_BUCKET), holder, s.lease_ttl)
    decisions = await bus.kv_bucket(nc, subjects.AUTOSCALER_BUCKET)
    scaler = Autoscaler(nc, inputs, lease, decisions, holder)
    metrics_port = serve_metrics(s.metrics_host, s.metrics_port)
    log.info("autoscaler_ready", holder=holder, metrics=metrics_port, tick_s=s.tick)
    if s.ready_file:
        tmp = Path(s.ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps({"metrics_port": metrics_port, "holder": holder}))
        tmp.replace(s.ready_file)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await scaler.run(s.tick, stop)
    finally:
        await lease.release()
        await inputs.stop()
        await nc.drain()
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = parse(AutoscalerSettings, sys.argv[1:] if argv is None else argv,
                     "basalt autoscaler")
    blog.configure("autoscaler", settings.log_level)
    try:
        return asyncio.run(run(settings))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt autoscaler: {e}", file=sys.stderr)
        return 2
