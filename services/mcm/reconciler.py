"""The reconcile loop: reads deployments and replica records, plans, and launches and stops
replicas through a provider (does I/O; the decision is `core/reconcile.plan`, who is alive
and who backs off is `core/liveness.Liveness`).

Every tick: read the deployments (store), the replica records (`basalt_replicas`) and the
replicas the provider runs for our owner id; apply the liveness rules; plan; start each
launch and stop as a task, so a slow provider never stalls the loop. A ProviderError blocks
the cloud, region or zone its scope names for `block_ttl_s`; the next tick places elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from google.protobuf.message import DecodeError
from nats.js.kv import KeyValue

from basalt import bus, startfail, subjects
from basalt.ids import ReplicaId
from basalt.log import get_logger
from basalt.pb import deploy_pb2, events_pb2
from basalt.replicaauth import replica_token, verify
from basalt.weights import node_of_cluster, revision_key
from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import PlacementError, ProviderError
from services.mcm.core.health import ControlState
from services.mcm.core.inventory import Cluster, DeploymentId
from services.mcm.core.liveness import FailureMark, Liveness
from services.mcm.core.placement import NO_LATENCY, Requirement
from services.mcm.core.provider import LaunchHandle, LaunchRequest, Provider
from services.mcm.core.reconcile import (
    Launch,
    ObservedReplica,
    PendingLaunch,
    Plan,
    PlanContext,
    Stop,
    Target,
    plan,
)
from services.mcm.core.rollout import spec_revision
from services.mcm.core.startcost import estimates
from services.mcm.core.status import StartFailure, cluster_rows, status_doc

from .store import Store
from .weights import NoWeightCache, PrefetchFailed, WeightsClient

log = get_logger(__name__)


@dataclass(slots=True, frozen=True)
class ReconcilerSettings:
    nats_url: str
    block_ttl_s: float = 60.0
    launch_timeout_s: float = 600.0
    stale_after_s: float = 6.0
    backoff_base_s: float = 2.0
    backoff_max_s: float = 60.0
    # Start failures in a row after which a deployment is FAILED (no more launches).
    max_failures: int = 5
    # The platform secret each replica's credential is derived from (empty: replicas run
    # without one) and the environment every replica gets (its NATS credentials file).
    replica_secret: bytes = b""
    runtime_env: Mapping[str, str] = field(default_factory=dict)

    def env_for(self, replica_id: str) -> dict[str, str]:
        env = dict(self.runtime_env)
        if self.replica_secret:
            env["BASALT_RUNTIME_TOKEN"] = replica_token(self.replica_secret, replica_id)
        return env


def target_of(rec: deploy_pb2.DeploymentRecord,
              start_s: Mapping[str, float] | None = None) -> Target:
    """What a deployment record asks for; only an ACTIVE one gets replicas (as the router
    serves only ACTIVE ones). `start_s`: estimated start seconds per cluster."""
    spec = rec.spec
    requirement = Requirement(
        accelerator=spec.accelerator, count=spec.accelerator_count,
        allowed_regions=frozenset(spec.allowed_regions),
        preferred_regions=frozenset(spec.preferred_regions),
    )
    active = rec.status == deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
    return Target(rec.desired_replicas, requirement, active, start_s=dict(start_s or {}),
                  revision=spec_revision(spec))


def launch_request(rec: deploy_pb2.DeploymentRecord, action: Launch, owner: str,
                   nats_url: str, env: Mapping[str, str] | None = None) -> LaunchRequest:
    """The provider request for one planned launch of `rec` on the chosen cluster."""
    spec, c = rec.spec, action.cluster
    return LaunchRequest(
        replica_id=action.replica_id, deployment_id=action.deployment_id, owner=owner,
        engine=spec.engine or "vllm", model_path=spec.model_path, model_name=rec.model,
        nats_url=nats_url, cluster=c.name, cloud=c.cloud, region=c.region, zone=c.zone,
        engine_args=dict(spec.engine_args), loras={x.name: x.path for x in spec.loras},
        accelerator=spec.accelerator, accelerator_count=spec.accelerator_count,
        spec_revision=action.revision, env=dict(env or {}),
    )


async def read_replicas(kv: KeyValue, secret: bytes = b"") -> dict[ReplicaId, events_pb2.ReplicaRecord]:
    """Every replica record in the bucket (expired and deleted ones are absent). With the
    platform secret, a record not signed by the replica it names (or under another key, or
    unreadable) is left out: a forged record must not count as capacity."""
    out = {}
    for key, value in (await bus.kv_items(kv)).items():
        try:
            rec = events_pb2.ReplicaRecord.FromString(value)
        except DecodeError:
            log.warning("bad_replica_record", key=key)
            continue
        if secret and (rec.replica_id != key or not verify(secret, key, rec)):
            log.warning("unauthentic_replica_record", key=key[:80])
            continue
        out[ReplicaId(key)] = rec
    return out


class Reconciler:
    """Moves the replicas this owner runs toward what the deployments ask for."""

    def __init__(self, store: Store, replicas: KeyValue, provider: Provider, owner: str,
                 settings: ReconcilerSettings, *, seed: str | None = None,
                 clock: Callable[[], float] = time.time,
                 weights: WeightsClient | None = None) -> None:
        self.store = store
        self.replicas = replicas
        self.provider = provider
        self.owner = owner
        self.settings = settings
        # The node weight caches: deployments with a `weights` source start through them.
        self.weights = weights
        self.blocklist = Blocklist()
        # From the last plan: deployments short of replicas that no cluster fits, and why.
        self.unplaced: dict[DeploymentId, PlacementError] = {}
        self.last_plan = Plan()
        self._seed = seed or secrets.token_hex(4)
        self._seq = 0
        self._clock = clock
        self._launching: dict[ReplicaId, PendingLaunch] = {}
        self._launch_tasks: dict[ReplicaId, asyncio.Task[None]] = {}
        # Launches still waiting for a node to fetch their weights (nothing started yet).
        self._prefetching: set[ReplicaId] = set()
        self._stop_tasks: dict[ReplicaId, asyncio.Task[None]] = {}
        # Launches that finished since the last tick: gone at the next listing means died.
        self._launched: dict[ReplicaId, LaunchHandle] = {}
        # The rules of who is alive, who vanished and who backs off (core/liveness.py).
        self.live = Liveness(owner, settings.stale_after_s)
        # Each deployment's failure mark (spec revision, retry mark) at the last tick.
        self._marks: dict[DeploymentId, tuple[FailureMark, bool]] = {}
        self.ticks = 0
        self._wake = asyncio.Event()
        self._closing = asyncio.Event()

    # -- the loop --------------------------------------------------------------------------

    async def run(self, period: float) -> None:
        """Tick every `period` seconds (sooner after `poke`) until `request_stop`."""
        while not self._closing.is_set():
            try:
                await self.tick()
            except Exception as e:  # NATS down, a bad record: log and try again next period
                log.exception("reconcile_tick_failed", error=str(e))
            self._wake.clear()
            waits = [asyncio.ensure_future(self._wake.wait()),
                     asyncio.ensure_future(self._closing.wait())]
            await asyncio.wait(waits, timeout=period, return_when=asyncio.FIRST_COMPLETED)
            for w in waits:
                w.cancel()

    def poke(self) -> None:
        """Tick now rather than at the end of the period (a deployment changed)."""
        self._wake.set()

    def request_stop(self) -> None:
        self._closing.set()

    async def tick(self, now: float | None = None) -> Plan:
        """Observe, plan, and start the plan's launches and stops (not waiting for them)."""
        # Before any await: see `_observe`.
        launching, launched = list(self._launching.values()), dict(self._launched)
        deployments = {DeploymentId(r.id): r for r in await self.store.list()}
        records = await read_replicas(self.replicas, self.settings.replica_secret)
        handles = await self.provider.list_owned(self.owner)
        now = self._clock() if now is None else now
        clusters = self.provider.clusters()
        self._marks = {d: (FailureMark(spec_revision(r.spec), r.retry_ts),
                           r.status == deploy_pb2.DEPLOYMENT_STATUS_ACTIVE)
                       for d, r in deployments.items()}
        self.live.forget_failures(self._marks)
        views, pending = self._observe(records, handles, launching, launched, clusters, now)
        await self._delete_dead_records(records)
        latency = getattr(self.provider, "latency", None)
        ctx = PlanContext(
            self.owner, clusters, self.blocklist, now, self._seed, self._seq,
            latency() if callable(latency) else NO_LATENCY,
            launch_timeout_s=self.settings.launch_timeout_s,
            stopping=frozenset(self._stop_tasks) | frozenset(self.live.stopped),
        )
        start_s = await self._start_estimates(deployments, clusters, now)
        result = plan({d: target_of(r, start_s.get(d)) for d, r in deployments.items()}, views,
                      pending, ctx)
        self._seq = result.next_seq
        self._log_unplaced(result.unplaced)
        self.last_plan = result
        for action in result.actions:
            if isinstance(action, Stop):
                self._start_stop(action)
            elif self.live.backing_off(action.deployment_id, now):
                continue
            else:
                rec = deployments[action.deployment_id]
                self._start_launch(launch_request(rec, action, self.owner,
                                                  self.settings.nats_url,
                                                  self.settings.env_for(action.replica_id)),
                                   action.cluster, now,
                                   rec.spec.weights if rec.spec.HasField("weights") else None)
        self.blocklist.prune(now)
        self.ticks += 1
        return result

    async def _start_estimates(self, deployments: Mapping[DeploymentId, deploy_pb2.DeploymentRecord],
                               clusters: list[Cluster], now: float
                               ) -> dict[DeploymentId, dict[str, float]]:
        """Estimated start seconds of each deployment with a weights source on each cluster."""
        with_weights = {d: r for d, r in deployments.items() if r.spec.HasField("weights")}
        if self.weights is None or not with_weights:
            return {}
        try:
            nodes = await self.weights.nodes()
        except Exception as e:  # noqa: BLE001 - placement without the estimate this tick
            log.warning("node_weights_read_failed", error=str(e) or type(e).__name__)
            return {}
        names = [c.name for c in clusters]
        return {d: estimates(revision_key(r.spec.weights), names, nodes, now,
                             subjects.WEIGHTS_STALE_S) for d, r in with_weights.items()}

    def _log_unplaced(self, unplaced: dict[DeploymentId, PlacementError]) -> None:
        for dep, err in sorted(unplaced.items()):
            if str(self.unplaced.get(dep)) != str(err):
                log.warning("deployment_unplaced", deployment=dep, reason=str(err))
        self.unplaced = unplaced

    # -- what is running -------------------------------------------------------------------

    def _observe(self, records: Mapping[ReplicaId, events_pb2.ReplicaRecord],
                 handles: list[LaunchHandle], launching: list[PendingLaunch],
                 launched: Mapping[ReplicaId, LaunchHandle], clusters: list[Cluster],
                 now: float) -> tuple[list[ObservedReplica], list[PendingLaunch]]:
        """Apply the liveness rules to what this tick read; log and count what vanished."""
        seen = self.live.observe(records, handles, launching, launched, set(self._launching),
                                 set(self._stop_tasks), clusters, now)
        for gone in seen.vanished:
            log.warning("replica_vanished", replica_id=gone.replica_id,
                        deployment=gone.handle.deployment_id, cluster=gone.handle.cluster,
                        was_ready=gone.was_ready)
            if gone.start_failure:
                self._start_failed(gone.handle, now)
        for rid in launched:
            self._launched.pop(rid, None)
        return seen.replicas, seen.pending

    async def _delete_dead_records(self, records: Mapping[ReplicaId, object]) -> None:
        """Delete the records of our replicas whose process is gone (died, or stopped but
        killed before it deregistered), so routers drop them now, not at the TTL."""
        for rid in records:
            if rid in self.live.listed or rid in self._launching or rid in self._stop_tasks:
                continue
            if self.live.dead(rid):
                try:
                    await self.replicas.delete(rid)
                except Exception as e:  # noqa: BLE001 - it expires at its TTL anyway
                    log.warning("replica_record_delete_failed", replica_id=rid, error=str(e))

    def _start_failed(self, handle: LaunchHandle, now: float) -> None:
        tail_of = getattr(self.provider, "log_tail", None) or getattr(
            getattr(self.provider, "local", None), "log_tail", None)
        tail = tail_of(handle.replica_id, 20000) if callable(tail_of) else ""
        found = startfail.parse(tail)
        first = found.message if found else f"replica {handle.replica_id} exited before it was ready"
        self._failed(handle.deployment_id, f"replica {handle.replica_id} exited before it was "
                     "ready" + (f"; log tail:\n{tail[-1000:]}" if tail else ""), now,
                     phase=found.phase if found else "", first_error=first)

    def _failed(self, dep: DeploymentId, error: str, now: float, *, phase: str = "",
                first_error: str = "") -> None:
        """One more start failure of `dep`: its next launch waits 2, 4, 8 ... seconds; after
        MAX_FAILURES in a row it is FAILED (core/liveness.py)."""
        mark, _ = self._marks.get(dep, (FailureMark(), True))
        failure = self.live.record_failure(dep, error, now, self.settings.backoff_base_s,
                                           self.settings.backoff_max_s, phase=phase,
                                           first_error=first_error or startfail.one_line(error),
                                           mark=mark, max_failures=self.settings.max_failures)
        log.warning("replica_start_failed", deployment=dep, failures=failure.count,
                    failed=failure.given_up, phase=phase,
                    retry_in_s=None if failure.given_up else round(failure.retry_at - now, 3),
                    error=failure.first_error)

    @property
    def failures(self) -> dict[DeploymentId, StartFailure]:
        """Consecutive start failures per deployment (what `status` shows)."""
        return self.live.failures

    # -- acting ----------------------------------------------------------------------------

    def _start_launch(self, req: LaunchRequest, cluster: Cluster, now: float,
                      weights: deploy_pb2.WeightsSource | None = None) -> None:
        rid = req.replica_id
        self._launching[rid] = PendingLaunch(rid, req.deployment_id, cluster.name, now,
                                             self.owner, req.spec_revision)
        # Wall clock, not self._clock: the runtime compares it with its own time.time().
        req = dataclasses.replace(req, env={**req.env,
                                            "BASALT_START_PLACED_TS": f"{time.time():.3f}"})
        self._launch_tasks[rid] = asyncio.create_task(self._launch(req, cluster, weights))

    async def _with_weights(self, req: LaunchRequest, cluster: Cluster,
                            source: deploy_pb2.WeightsSource) -> LaunchRequest:
        """Have the node's cache make the weights present, then point the replica at them."""
        if self.weights is None:
            raise RuntimeError("this control plane has no NATS connection for weight caches")
        node = node_of_cluster(cluster.name)
        pre = await self.weights.prefetch(node, source, req.replica_id,
                                          self.settings.launch_timeout_s)
        env = {**req.env, "BASALT_START_FETCHED_TS": f"{time.time():.3f}",
               "BASALT_START_FETCHED_BYTES": str(pre.fetched_bytes),
               "BASALT_START_TIER": pre.tier, "BASALT_START_WEIGHTS_REVISION": pre.key}
        log.info("replica_weights_ready", replica_id=req.replica_id, node=node,
                 key=pre.key, tier=pre.tier, fetched_bytes=pre.fetched_bytes, path=pre.path)
        if req.engine == "python":
            return dataclasses.replace(req, weights_dir=pre.path, env=env)
        return dataclasses.replace(req, model_path=pre.path, env=env)

    async def _launch(self, req: LaunchRequest, cluster: Cluster,
                      weights: deploy_pb2.WeightsSource | None = None) -> None:
        rid = req.replica_id
        log.info("replica_launch", replica_id=rid, deployment=req.deployment_id,
                 cluster=cluster.name)
        try:
            if weights is not None:
                self._prefetching.add(rid)
                try:
                    req = await self._with_weights(req, cluster, weights)
                finally:
                    self._prefetching.discard(rid)
            self._launched[rid] = await self.provider.launch(req)
        except ProviderError as e:
            block = self.blocklist.block(e.scope, cluster, self._clock(),
                                         self.settings.block_ttl_s, e.message)
            log.warning("replica_launch_failed", replica_id=rid, cluster=cluster.name,
                        error=str(e), blocked=f"{block.scope.value} {block.key}",
                        until=round(block.until, 1))
        except (NoWeightCache, PrefetchFailed) as e:  # said in full: no traceback to add
            log.warning("replica_weights_failed", replica_id=rid, cluster=cluster.name,
                        error=str(e))
            self._failed(req.deployment_id, f"launch of {rid} failed: {e}", self._clock())
        except Exception as e:  # a request the runtime cannot take: not the cluster's fault
            log.exception("replica_launch_error", replica_id=rid, error=str(e))
            self._failed(req.deployment_id, f"launch of {rid} failed: {e}", self._clock())
        finally:
            self._launching.pop(rid, None)
            self._launch_tasks.pop(rid, None)

    def _start_stop(self, action: Stop) -> None:
        rid = action.replica_id
        if rid in self._stop_tasks:
            return
        log.info("replica_stop", replica_id=rid, deployment=action.deployment_id,
                 reason=action.reason.value)
        self.live.stopped.add(rid)
        self._stop_tasks[rid] = asyncio.create_task(self._stop(rid))

    async def _stop(self, rid: ReplicaId) -> None:
        try:
            launch = self._launch_tasks.get(rid)
            if launch is not None:  # stop what the launch starts, not before it starts it
                await asyncio.wait([launch])
            await self.provider.stop(rid)
        except Exception as e:
            self.live.stopped.discard(rid)  # the next plan asks again
            log.exception("replica_stop_failed", replica_id=rid, error=str(e))
        finally:
            self._stop_tasks.pop(rid, None)

    async def close(self, stop_replicas: bool = False) -> None:
        """Let launches in flight finish (so a restart finds them); with `stop_replicas`,
        stop every replica of this owner, else leave them running for the next start."""
        self.request_stop()
        for rid in list(self._prefetching):  # nothing started yet: nothing to find later
            task = self._launch_tasks.get(rid)
            if task is not None:
                task.cancel()
        if self._launch_tasks:
            await asyncio.wait(list(self._launch_tasks.values()))
        if stop_replicas:
            if self._stop_tasks:
                await asyncio.wait(list(self._stop_tasks.values()))
            await self.provider.list_owned(self.owner)  # find those a previous run started
            await self.provider.close()
            return
        for task in list(self._stop_tasks.values()):
            task.cancel()  # the replica got SIGTERM and exits on its own

    async def settle(self) -> None:
        """Wait for the launches and stops started so far (tests and shutdown)."""
        tasks = [*self._launch_tasks.values(), *self._stop_tasks.values()]
        if tasks:
            await asyncio.wait(tasks)

    # -- status ----------------------------------------------------------------------------

    def cluster_status(self) -> list[dict[str, Any]]:
        """Each cluster as the deployments API shows it (GET /v1/clusters)."""
        now = self._clock()
        return cluster_rows(self.provider.name, self.provider.clusters(), self.live.listed.values(),
                            self.blocklist, now)

    def deployment_health(self) -> ControlState:
        """Start failures, unplaced deployments and each replica's spec revision, for the
        API's deployment views (core/health.py)."""
        revisions = {str(rid): h.spec_revision for rid, h in self.live.listed.items()}
        revisions.update({str(rid): p.revision for rid, p in self._launching.items()})
        return ControlState({str(d): f for d, f in self.failures.items()},
                            {str(d): str(e) for d, e in self.unplaced.items()},
                            revisions, self.ticks)

    def status(self) -> dict[str, Any]:
        """Clusters, active blocks, unplaced deployments and start failures, as JSON."""
        now = self._clock()
        return status_doc(self.owner, self.provider.name, self.cluster_status(), self.blocklist,
                          self.unplaced, self.failures, now)
