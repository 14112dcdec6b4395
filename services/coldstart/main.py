"""The coldstart process: one node's weight cache (does I/O; the rules are in core/).

- Consumes `WeightsFetch` commands for this node from stream BASALT_WEIGHTS (durable consumer
  `coldstart-<node>`, explicit ack). Each is applied idempotently by revision key: present →
  checked and acked at once; being fetched → the command joins that fetch (single flight);
  absent → evict what must go, fetch, verify, link, ack. A failed fetch is recorded as FAILED
  with its reason and acked: whoever asked (the control plane) sees it and asks again later.
- Publishes what the node holds in bucket `basalt_weights` (key = node) on every change and
  every `heartbeat` seconds, and each fetch's progress on `basalt.weights.progress.<node>`.
- Reads replica records: a revision a live replica on this node names is never evicted.
- Keeps the most recently used revisions in memory (the page cache: the warm tier).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import sys
import time
from pathlib import Path

import nats.errors
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.kv import KeyValue
from prometheus_client import Counter, Gauge

from basalt import bus, subjects
from basalt import log as blog
from basalt.config import parse
from basalt.metrics import serve_metrics
from basalt.pb import deploy_pb2, events_pb2, weights_pb2
from basalt.replicaauth import verify
from basalt.secretfiles import read_secret
from basalt.weights import local_path, node_of_cluster, normal_uri, revision_key, uri_problem
from basalt.weightstream import ensure_stream, weights_bucket

from .config import ColdstartSettings
from .core.cache import NoRoom, in_use, plan_eviction, tier, warm_set
from .core.progress import Progress, bandwidth, human_bytes
from .sources import SourceError, open_source
from .store import Manifest, Store

log = blog.get_logger(__name__)

FETCHED = Counter("basalt_coldstart_fetched_bytes_total", "Bytes fetched from sources")
FETCHES = Counter("basalt_coldstart_fetches_total", "Fetch commands by outcome", ["outcome"])
EVICTIONS = Counter("basalt_coldstart_evictions_total", "Revisions evicted")
USED = Gauge("basalt_coldstart_cache_used_bytes", "Bytes the cache holds on disk")
BUDGET = Gauge("basalt_coldstart_cache_budget_bytes", "The cache's size budget")
WARM = Gauge("basalt_coldstart_warm_bytes", "Bytes of cached revisions in memory")
BANDWIDTH = Gauge("basalt_coldstart_fetch_bytes_per_second", "Measured fetch bandwidth")
DONE = Gauge("basalt_coldstart_fetch_done_bytes", "Bytes done of a fetch in flight", ["key"])
TOTAL = Gauge("basalt_coldstart_fetch_total_bytes", "Bytes of a fetch in flight", ["key"])
RATE = Gauge("basalt_coldstart_fetch_rate_bytes_per_second", "Rate of a fetch in flight", ["key"])
ETA = Gauge("basalt_coldstart_fetch_eta_seconds", "Seconds left of a fetch in flight", ["key"])


class Coldstart:
    """One node's cache service."""

    def __init__(self, nc: Client, kv: KeyValue, store: Store, s: ColdstartSettings,
                 replica_secret: bytes = b"") -> None:
        self.nc, self.kv, self.store, self.s = nc, kv, store, s
        self.replica_secret = replica_secret
        self.budget = int(s.budget_gb * 1e9)
        self.warm_budget = int(s.warm_gb * 1e9)
        # Fetches in flight by revision: (manifest, whether this flight fetched anything).
        self.inflight: dict[str, asyncio.Task[tuple[Manifest, bool]]] = {}
        self.progress: dict[str, Progress] = {}
        self.failed: dict[str, weights_pb2.WeightsRevision] = {}
        self.sources: dict[str, deploy_pb2.WeightsSource] = {}
        self.pins: dict[str, float] = {}
        self.done: dict[str, list[weights_pb2.WeightsDone]] = {}
        self.replica_keys: set[str] = set()
        self.fetch_bw = 0.0
        self.read_bw = 0.0
        self.limit = asyncio.Semaphore(s.max_parallel)
        self.evict_lock = asyncio.Lock()
        self.changed = asyncio.Event()
        BUDGET.set(self.budget)

    # -- one command ----------------------------------------------------------------------

    async def handle(self, msg: Msg) -> None:
        try:
            cmd = weights_pb2.WeightsFetch.FromString(msg.data)
        except DecodeError:
            log.error("weights_command_unreadable", subject=msg.subject, size=len(msg.data))
            await msg.term()
            return
        if cmd.node != self.s.node or uri_problem(cmd.source.uri):
            log.error("weights_command_invalid", node=cmd.node, command_id=cmd.command_id,
                      problem=uri_problem(cmd.source.uri) or "another node's command")
            await msg.term()
            return
        key = revision_key(cmd.source)
        work = asyncio.create_task(self.ensure(cmd.source, cmd.replica_id))
        while not work.done():  # a long fetch: tell JetStream not to redeliver it meanwhile
            await asyncio.wait([work], timeout=10.0)
            if not work.done():
                with contextlib.suppress(Exception):
                    await msg.in_progress()
        error = work.exception()
        if error is None:
            m, did_fetch = work.result()
            fetched = m.fetched_bytes if did_fetch else 0
            done = weights_pb2.WeightsDone(
                command_id=cmd.command_id, fetched_bytes=fetched, ts=time.time(),
                tier="source" if fetched else self.start_tier(key))
        else:
            done = weights_pb2.WeightsDone(command_id=cmd.command_id, ts=time.time(),
                                           error=(str(error) or type(error).__name__)[:500])
        self.done.setdefault(key, []).append(done)
        del self.done[key][:-32]
        FETCHES.labels(outcome="present" if error is None else "failed").inc()
        self.changed.set()
        await self.publish()
        await msg.ack()

    async def ensure(self, source: deploy_pb2.WeightsSource, replica_id: str = ""
                     ) -> tuple[Manifest, bool]:
        """Make the revision present (once, however many ask at the same time); True when
        it had to be fetched (every caller that waited on that fetch gets True)."""
        key = revision_key(source)
        self.sources[key] = source
        if replica_id:
            self.pins[key] = time.time() + self.s.pin_s
        task = self.inflight.get(key)
        if task is None:
            task = asyncio.create_task(self._ensure(key, source))
            self.inflight[key] = task
            task.add_done_callback(lambda _t: self._done(key))
        return await asyncio.shield(task)

    def _done(self, key: str) -> None:
        self.inflight.pop(key, None)
        self.progress.pop(key, None)
        for g in (DONE, TOTAL, RATE, ETA):
            with contextlib.suppress(KeyError):
                g.remove(key)
        self.changed.set()

    async def _ensure(self, key: str, source: deploy_pb2.WeightsSource) -> tuple[Manifest, bool]:
        m = self.store.manifest(key)
        if m is not None and await self._changed_at_source(m, source):
            log.info("weights_changed_at_source", key=key, uri=m.uri, had=m.resolved)
            self.store.evict(key)
            m = None
        if m is not None:
            bad = await asyncio.to_thread(self.store.check, m)
            if not bad:
                self.store.touch(key, time.time())
                self.failed.pop(key, None)
                log.info("weights_present", key=key, uri=m.uri, bytes=m.total_bytes)
                await self._publish_progress(key, weights_pb2.WEIGHTS_STATE_PRESENT, m)
                return m, False
            self.store.evict(key)  # a corrupted blob: fetched again, never served
        try:
            async with self.limit:
                return await self._fetch(key, source), True
        except Exception as e:
            why = str(e) or type(e).__name__
            log.warning("weights_failed", key=key, uri=normal_uri(source.uri), error=why)
            self.failed[key] = weights_pb2.WeightsRevision(
                key=key, source=source, state=weights_pb2.WEIGHTS_STATE_FAILED, error=why[:500],
                fetched_ts=time.time())
            await self._publish_progress(key, weights_pb2.WEIGHTS_STATE_FAILED, error=why[:500])
            raise

    async def _changed_at_source(self, m: Manifest, source: deploy_pb2.WeightsSource) -> bool:
        """A local folder named without a revision is the revision its files are now: listing
        it costs little, so a changed folder is fetched again. Remote sources are trusted to
        keep a revision's content (name a commit, not a branch, to pin it)."""
        if not local_path(source.uri) or source.revision:
            return False
        try:
            listing = await open_source(source, "").list()
        except SourceError:
            return False  # the folder went away: what the cache holds is still served
        return listing.resolved != m.resolved

    def _token(self, source: deploy_pb2.WeightsSource) -> str:
        if source.token_secret and self.s.secrets_dir:
            return read_secret(str(Path(self.s.secrets_dir) / source.token_secret))
        return ""

    async def _fetch(self, key: str, source: deploy_pb2.WeightsSource) -> Manifest:
        src = open_source(source, self._token(source))
        listing = await src.list()
        total = sum(f.size for f in listing.files)
        async with self.evict_lock:
            await self._make_room(key, [(f.sha256, f.size) for f in listing.files])
        started = time.time()
        prog = self.progress[key] = Progress(total, started)
        self.failed.pop(key, None)
        log.info("weights_fetch_started", key=key, uri=src.description, files=len(listing.files),
                 bytes=total, resolved=listing.resolved)
        self.changed.set()
        reporter = asyncio.create_task(self._report(key, prog))
        fetched = 0

        def on_bytes(n: int) -> None:
            nonlocal fetched
            fetched += n
            prog.add(n, time.time())
            FETCHED.inc(n)

        try:
            m = await self.store.fetch(key, normal_uri(source.uri), source.revision, src,
                                       listing, on_bytes)
        finally:
            reporter.cancel()
        took = time.time() - started
        if fetched:
            self.fetch_bw = bandwidth(self.fetch_bw, fetched / max(took, 1e-6))
            BANDWIDTH.set(self.fetch_bw)
        log.info("weights_fetched", key=key, uri=src.description, bytes=total, fetched=fetched,
                 seconds=round(took, 3), rate=human_bytes(fetched / max(took, 1e-6)) + "/s")
        await self._publish_progress(key, weights_pb2.WEIGHTS_STATE_PRESENT, m)
        if self.warm_budget:
            self._spawn_warm()
        return m

    async def _make_room(self, key: str, incoming: list[tuple[str, int]]) -> None:
        now = time.time()
        held = [m.held() for k, m in self.store.manifests().items() if k != key]
        busy = in_use(self.replica_keys, self.pins, now) | set(self.inflight) - {key}
        try:
            plan = plan_eviction(held, incoming, self.budget, frozenset(busy),
                                 await asyncio.to_thread(self.store.partial_bytes))
        except NoRoom as e:
            raise SourceError(f"cache full: {e}") from e
        for old in plan.evict:
            freed = await asyncio.to_thread(self.store.evict, old)
            EVICTIONS.inc()
            log.info("weights_evicted", key=old, freed=freed, for_key=key)

    async def _report(self, key: str, prog: Progress) -> None:
        """Progress a few times a second on NATS and /metrics, in the log every 2 s."""
        last_log = 0.0
        while True:
            await asyncio.sleep(0.25)
            DONE.labels(key=key).set(prog.done)
            TOTAL.labels(key=key).set(prog.total)
            RATE.labels(key=key).set(prog.rate)
            eta = prog.eta()
            ETA.labels(key=key).set(-1 if eta is None else eta)
            await self._publish_progress(key, weights_pb2.WEIGHTS_STATE_FETCHING)
            if time.time() - last_log >= 2.0:
                last_log = time.time()
                log.info("weights_progress", key=key, done=prog.done, total=prog.total,
                         rate=human_bytes(prog.rate) + "/s",
                         eta_s=None if eta is None else round(eta, 1))

    async def _publish_progress(self, key: str, state: int, m: Manifest | None = None,
                                error: str = "") -> None:
        prog = self.progress.get(key)
        total = m.total_bytes if m else (prog.total if prog else 0)
        msg = weights_pb2.WeightsProgress(
            node=self.s.node, key=key, done_bytes=m.total_bytes if m else (prog.done if prog else 0),
            total_bytes=total, bytes_per_s=prog.rate if prog else 0.0, state=state,  # type: ignore[arg-type]
            error=error, path=str(self.store.revision_dir(key)) if m else "", ts=time.time())
        with contextlib.suppress(Exception):
            await self.nc.publish(subjects.weights_progress(self.s.node), msg.SerializeToString())
        if state != weights_pb2.WEIGHTS_STATE_FETCHING:  # progress itself: the heartbeat's
            self.changed.set()

    # -- what the node holds --------------------------------------------------------------

    def record(self) -> weights_pb2.NodeWeights:
        now = time.time()
        revs = []
        for key, m in self.store.manifests().items():
            src = self.sources.get(key) or deploy_pb2.WeightsSource(uri=m.uri, revision=m.revision)
            revs.append(weights_pb2.WeightsRevision(
                key=key, source=src, resolved=m.resolved, state=weights_pb2.WEIGHTS_STATE_PRESENT,
                total_bytes=m.total_bytes, present_bytes=m.total_bytes,
                path=str(self.store.revision_dir(key)), fetched_ts=m.fetched_ts,
                last_used_ts=m.last_used_ts, warm_bytes=self.store.resident_bytes(m),
                files=len(m.files), fetched_bytes=m.fetched_bytes, done=self.done.get(key, [])))
        for key, prog in self.progress.items():
            revs.append(weights_pb2.WeightsRevision(
                key=key, source=self.sources.get(key), state=weights_pb2.WEIGHTS_STATE_FETCHING,
                total_bytes=prog.total, present_bytes=prog.done, done=self.done.get(key, [])))
        present = {r.key for r in revs}
        for k, r in self.failed.items():
            if k not in present:
                failed = weights_pb2.WeightsRevision()
                failed.CopyFrom(r)
                failed.done.extend(self.done.get(k, []))
                revs.append(failed)
        known = {r.key for r in revs}
        for k in [k for k in self.done if k not in known]:
            del self.done[k]  # evicted: its outcomes go with it
        queued = sum(max(p.total - p.done, 0) for p in self.progress.values())
        used = self.store.used_bytes()
        USED.set(used)
        WARM.set(sum(r.warm_bytes for r in revs))
        return weights_pb2.NodeWeights(
            node=self.s.node, revisions=revs, budget_bytes=self.budget, used_bytes=used,
            fetch_bytes_per_s=self.fetch_bw, read_bytes_per_s=self.read_bw,
            queued_bytes=queued, heartbeat_ts=now)

    async def publish(self) -> None:
        rec = await asyncio.to_thread(self.record)
        await self.kv.put(self.s.node, rec.SerializeToString())

    async def refresh_in_use(self) -> None:
        """Revisions named by live replica records on this node."""
        replicas = await bus.replicas_bucket(self.nc)
        keys = set()
        for rid, value in (await bus.kv_items(replicas)).items():
            with contextlib.suppress(DecodeError):
                rec = events_pb2.ReplicaRecord.FromString(value)
                if self.replica_secret and not verify(self.replica_secret, rid, rec):
                    continue
                if node_of_cluster(rec.cluster) == self.s.node and rec.weights_revision:
                    keys.add(rec.weights_revision)
                    self.pins.pop(rec.weights_revision, None)  # the record holds it now
        self.replica_keys = keys
        now = time.time()
        self.pins = {k: t for k, t in self.pins.items() if t > now}

    # -- the warm tier --------------------------------------------------------------------

    def _spawn_warm(self) -> None:
        task = asyncio.create_task(self.warm())
        task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    async def warm(self) -> None:
        """Read the revisions the warm tier keeps into the page cache (in use first, then
        most recently used, within `warm_gb`); measures the node's read bandwidth."""
        manifests = self.store.manifests()
        keep = warm_set([m.held() for m in manifests.values()],
                        in_use(self.replica_keys, self.pins, time.time()), self.warm_budget)
        for key in keep:
            t0 = time.perf_counter()
            n = await asyncio.to_thread(self.store.warm, manifests[key])
            took = time.perf_counter() - t0
            if n >= 64 << 20:  # big enough to say something about the disk
                self.read_bw = bandwidth(self.read_bw, n / took)
                log.info("weights_warmed", key=key, bytes=n, rate=human_bytes(n / took) + "/s")
        self.changed.set()

    def start_tier(self, key: str) -> str:
        m = self.store.manifest(key)
        if m is None or not m.total_bytes:
            return "node"
        return tier(0, self.store.resident_bytes(m) / m.total_bytes)

    # -- loops ----------------------------------------------------------------------------

    async def consume(self, stop: asyncio.Event) -> None:
        js = self.nc.jetstream()
        await ensure_stream(js)
        sub = await js.pull_subscribe(
            subjects.weights_fetch(self.s.node), durable=f"coldstart-{self.s.node}",
            stream=subjects.WEIGHTS_STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, deliver_policy=DeliverPolicy.ALL,
                                  ack_wait=30.0, max_ack_pending=64))
        handlers: set[asyncio.Task[None]] = set()
        try:
            while not stop.is_set():
                try:
                    msgs = await sub.fetch(batch=8, timeout=1.0)
                except nats.errors.TimeoutError:
                    continue
                except Exception as e:  # noqa: BLE001 - NATS away: retry
                    log.warning("weights_fetch_poll_failed", error=str(e) or type(e).__name__)
                    await asyncio.sleep(1.0)
                    continue
                for msg in msgs:
                    t = asyncio.create_task(self.handle(msg))
                    handlers.add(t)
                    t.add_done_callback(handlers.discard)
        finally:
            for t in handlers:
                t.cancel()
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def heartbeat(self, stop: asyncio.Event) -> None:
        last_warm = 0.0
        while not stop.is_set():
            try:
                await self.refresh_in_use()
                if self.warm_budget and time.time() - last_warm >= self.s.warm_interval:
                    last_warm = time.time()
                    self._spawn_warm()
                await self.publish()
            except Exception as e:  # noqa: BLE001 - NATS away: next beat
                log.warning("weights_publish_failed", error=str(e) or type(e).__name__)
            self.changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed_or(stop), timeout=self.s.heartbeat)

    async def _changed_or(self, stop: asyncio.Event) -> None:
        waits = [asyncio.create_task(self.changed.wait()), asyncio.create_task(stop.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()


async def run(s: ColdstartSettings) -> int:
    nc = await bus.connect(s.nats_url, name=f"coldstart-{s.node}", auth=s.nats_auth())
    secret = read_secret(s.replica_secret_file).encode() if s.replica_secret_file else b""
    store = Store(Path(s.cache_dir))
    service = Coldstart(nc, await weights_bucket(nc), store, s, secret)
    metrics_port = serve_metrics(s.metrics_host, s.metrics_port)
    await service.publish()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    tasks = [asyncio.create_task(service.consume(stop)),
             asyncio.create_task(service.heartbeat(stop))]
    log.info("coldstart_ready", node=s.node, cache=str(store.root), metrics=metrics_port,
             budget=human_bytes(service.budget), warm=human_bytes(service.warm_budget))
    if s.ready_file:
        tmp = Path(s.ready_file).with_suffix(".tmp")
        tmp.write_text(json.dumps({"metrics_port": metrics_port, "node": s.node,
                                   "cache_dir": str(store.root.resolve())}))
        tmp.replace(s.ready_file)
    try:
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for fetch in list(service.inflight.values()):
            fetch.cancel()
        with contextlib.suppress(Exception):  # gone now: placement stops counting on it
            await asyncio.wait_for(service.kv.delete(s.node), timeout=2)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(nc.drain(), timeout=3)
    return 0


def main(argv: list[str] | None = None) -> int:
    settings = parse(ColdstartSettings, sys.argv[1:] if argv is None else argv, "basalt coldstart")
    blog.configure("coldstart", settings.log_level)
    try:
        return asyncio.run(run(settings))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt coldstart: {e}", file=sys.stderr)
        return 2
