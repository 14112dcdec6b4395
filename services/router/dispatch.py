"""Sends a request to the replica the policy picks: queueing, failover, request records (does I/O)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import grpc

from basalt import subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2, runtime_pb2, runtime_pb2_grpc
from basalt.replicaauth import bearer, replica_token
from services.router.core.access import CANCELLED, AccessEntry, outcome_of
from services.router.core.demand import DemandBook, Phase
from services.router.core.deployments import Route
from services.router.core.errors import (
    BadRequest,
    NoReplica,
    ParkedFull,
    QueueFull,
    Rejected,
    ReplicaFailed,
    RouterError,
)
from services.router.core.failover import (
    MAX_ATTEMPTS,
    Fault,
    Next,
    admits,
    after_failure,
    classify,
    queue_timeout_s,
    why_unserved,
)
from services.router.core.fleet import Fleet
from services.router.core.hashing import OwnHashes
from services.router.core.index import PrefixIndex
from services.router.core.policy import RoundRobinState, choose
from services.router.core.types import (
    Decision,
    PolicyConfig,
    PolicyKind,
    RegionLatency,
    RouteRequest,
)

from . import metrics

log = get_logger(__name__)

REJECT_ON_FULL = "reject_on_full"
# A deployment waking from zero: requests wait longer than in the queue (a cold start).
DEFAULT_PARKED_LIMIT = 256
DEFAULT_PARKED_TIMEOUT_S = 600.0


@dataclass(slots=True)
class RequestContext:
    request_id: str
    client_region: str | None = None
    session_key: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    # The replica now serving the request (set when one is chosen).
    replica_id: str = ""
    # The prompt's own block hashes, by block size (computed on the first decision).
    hashes: dict[int, OwnHashes] = field(default_factory=dict)
    # The caller's `authorization` value (the KServe door checks the key per request).
    authorization: str | None = None
    # The HTTP door's access-log entry: it receives the request's record (the one source of
    # the access line's outcome, tokens and times).
    access: AccessEntry | None = None


@dataclass(slots=True)
class RequestSummary:
    """What the router learned while serving one request (for the request record)."""

    replica_id: str = ""
    queue_wait_ms: float = 0.0
    ttft_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    outcome: str = "ok"


class _Credential:
    """Adds `authorization: Bearer <the replica's token>` to every call on a channel."""

    def __init__(self, token: str) -> None:
        self.header = ("authorization", bearer(token))

    def _details(self, d: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(d.metadata or ()), self.header)
        return grpc.aio.ClientCallDetails(d.method, d.timeout, metadata, d.credentials,
                                          d.wait_for_ready)


# grpc.aio registers an interceptor for the first call shape it implements only: one class each.
class _UnaryCredential(_Credential, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class _StreamCredential(_Credential, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation, details, request):  # type: ignore[no-untyped-def]
        return await continuation(self._details(details), request)


class Channels:
    """One gRPC channel per replica (address and id), reused across requests. With the
    platform secret, each carries that replica's credential."""

    def __init__(self, secret: bytes = b"", warm_on_sight: bool = False) -> None:
        self.secret = secret
        # The router's own: connect a replica's channel when the replica appears (`warm`).
        self.warm_on_sight = warm_on_sight
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._closed = False

    def stub(self, address: str, replica_id: str = "") -> runtime_pb2_grpc.RuntimeStub:
        key = (address, replica_id if self.secret else "")
        ch = self._channels.get(key)
        if ch is None:
            token = replica_token(self.secret, replica_id) if self.secret else ""
            interceptors = ([_UnaryCredential(token), _StreamCredential(token)]
                            if token else None)
            ch = self._channels[key] = grpc.aio.insecure_channel(address,
                                                                 interceptors=interceptors)
        return runtime_pb2_grpc.RuntimeStub(ch)

    async def warm(self, address: str, replica_id: str = "", timeout_s: float = 30.0) -> None:
        """Connect the replica's channel now, so its first request finds it connected."""
        if self._closed:  # a warm-up that outlived the router's channels: nothing to open
            return
        self.stub(address, replica_id)
        ch = self._channels.get((address, replica_id if self.secret else ""))
        if ch is None:
            return
        t0 = time.perf_counter()
        try:
            await asyncio.wait_for(ch.channel_ready(), timeout_s)
        except (TimeoutError, grpc.aio.UsageError):  # not up yet, or dropped meanwhile
            return
        metrics.PHASE_CONNECT.observe(time.perf_counter() - t0)

    async def drop(self, address: str) -> None:
        for key in [k for k in self._channels if k[0] == address]:
            ch = self._channels.pop(key, None)
            if ch is not None:
                await ch.close()

    async def close(self) -> None:
        self._closed = True
        for address, _ in list(self._channels):
            await self.drop(address)


class Wakeup:
    """Wakes every request waiting for a replica when something changed (a call finished, a
    record or load report came in). No wake-up is lost: a waiter takes the current event
    before it looks, and `notify` sets that event and starts a new one for later waiters."""

    __slots__ = ("_event",)

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def ticket(self) -> asyncio.Event:
        """The event the next `notify` sets: take it, then look, then wait on it."""
        return self._event

    def notify(self) -> None:
        event, self._event = self._event, asyncio.Event()
        event.set()

    def set(self) -> None:  # the watchers' `changed()` callback
        self.notify()


# A queued request also looks again this often with no wake-up: a replica's failure backoff
# ends on the clock, not on an event.
QUEUE_RECHECK_S = 0.5


class Dispatcher:
    def __init__(
        self,
        fleet: Fleet,
        index: PrefixIndex,
        channels: Channels,
        *,
        region: str,
        latency: RegionLatency,
        base_policy: PolicyConfig,
        publish: Callable[[str, bytes], object] | None = None,
        seed: int = 0,
    ) -> None:
        self.fleet = fleet
        self.index = index
        self.channels = channels
        self.region = region
        self.latency = latency
        self.base_policy = base_policy
        self.publish = publish
        self.rng = random.Random(seed)
        self._rr: dict[str, RoundRobinState] = {}
        self._waiting: dict[str, int] = {}
        # Per deployment, the requests waiting for a replica in arrival order: only the
        # first may take one, so parked requests are served in the order they came.
        self._lines: dict[str, list[str]] = {}
        self.demand = DemandBook()
        self.changed = Wakeup()
        self._policies: dict[str, PolicyConfig] = {}

    def policy_for(self, dep: deploy_pb2.DeploymentRecord) -> PolicyConfig:
        """The router's weights with the deployment's policy kind (built once per kind)."""
        name = dep.spec.routing_policy
        found = self._policies.get(name)
        if found is None:
            kind = PolicyKind(name) if name else self.base_policy.kind
            found = self._policies[name] = replace(self.base_policy, kind=kind)
        return found

    def decide(
        self, route: Route, prompt: Sequence[int], ctx: RequestContext, exclude: set[str], now: float,
    ) -> tuple[Decision | None, int]:
        """Pick a replica at time `now` (or None); also returns the request's block count."""
        dep = route.deployment
        views = [v for v in self.fleet.candidates(dep.id, now) if v.replica_id not in exclude]
        if not views:
            return None, 0
        block_size = views[0].kv_block_size
        t0 = time.perf_counter()
        hashes = ctx.hashes.get(block_size)
        if hashes is None:  # once per request, not on every retry or queue wake-up
            hashes = ctx.hashes[block_size] = self.index.hasher(prompt, block_size, route.lora_name)
            t1 = time.perf_counter()
            metrics.PHASE_HASH.observe(t1 - t0)
            t0 = t1
        overlap = self.index.match(hashes)
        request = RouteRequest(
            num_prompt_tokens=len(prompt), num_blocks=len(hashes), lora_name=route.lora_name,
            region=ctx.client_region or self.region, session_key=ctx.session_key,
        )
        decision = choose(
            request, views, overlap, self.policy_for(dep), now=now, latency=self.latency,
            rng=self.rng, rr_state=self._rr.setdefault(dep.id, RoundRobinState()),
        )
        metrics.PHASE_DECIDE.observe(time.perf_counter() - t0)
        return decision, max(len(hashes), -(-len(prompt) // block_size))

    async def _acquire(
        self, route: Route, prompt: Sequence[int], ctx: RequestContext, exclude: set[str]
    ) -> tuple[Decision, int]:
        """Wait until a replica can take the request: in the deployment's bounded queue, or,
        while it has no ready replica, parked (its own limit and timeout) with a wake sent."""
        dep = route.deployment
        decision, blocks = self.decide(route, prompt, ctx, exclude, time.monotonic())
        if decision is not None:
            return decision, blocks
        # Parked (and woken) only where an autoscaler may add a replica; a fixed deployment
        # with none ready (all starting or failed) queues as before.
        at_zero = (dep.spec.HasField("autoscaling")
                   and not self.fleet.candidates(dep.id, time.monotonic()))
        if dep.spec.request_backpressure_policy == REJECT_ON_FULL:
            if at_zero:
                self._wake(dep.id)
            raise Rejected(dep.id, at_zero)
        if at_zero:
            limit = dep.spec.parked_limit or DEFAULT_PARKED_LIMIT
            timeout = dep.spec.parked_timeout_s or DEFAULT_PARKED_TIMEOUT_S
            key, phase = f"{dep.id}\0parked", Phase.PARKED
            if not admits(self._waiting.get(key, 0), limit):
                raise ParkedFull(dep.id, limit)
        else:
            limit = dep.spec.queue_limit
            timeout = queue_timeout_s(dep.spec.queue_timeout_s)
            key, phase = dep.id, Phase.QUEUED
            if not admits(self._waiting.get(key, 0), limit):
                raise QueueFull(dep.id, limit)
        self._waiting[key] = self._waiting.get(key, 0) + 1
        self.demand.phase(dep.id, ctx.request_id, phase, time.monotonic())
        if at_zero:
            self._wake(dep.id)  # after counting this request among the parked
        line = self._lines.setdefault(dep.id, [])
        line.append(ctx.request_id)
        metrics.QUEUED.labels(deployment=dep.id).inc()
        queued_at = time.monotonic()
        deadline = queued_at + timeout
        ticket = self.changed.ticket()
        try:
            while (now := time.monotonic()) < deadline:
                # Woken by a change (a call ending, a record or load report), not by polling.
                wait_s = min(QUEUE_RECHECK_S, deadline - now)
                try:
                    await asyncio.wait_for(ticket.wait(), timeout=wait_s)
                except TimeoutError:
                    pass
                ticket = self.changed.ticket()
                now = time.monotonic()
                if phase is Phase.PARKED and not self.fleet.candidates(dep.id, now):
                    self._wake(dep.id)  # resent each second while parked: a wake may be lost
                if line and line[0] != ctx.request_id and not exclude:
                    continue
                decision, blocks = self.decide(route, prompt, ctx, exclude, now)
                if decision is not None:
                    metrics.PHASE_QUEUE.observe(time.monotonic() - queued_at)
                    return decision, blocks
            candidates = len(self.fleet.candidates(dep.id, time.monotonic()))
            raise NoReplica(dep.id, timeout, why_unserved(candidates))
        finally:
            self._waiting[key] -= 1
            line.remove(ctx.request_id)
            if not line:
                self._lines.pop(dep.id, None)
            self.changed.notify()  # the next in line tries at once
            metrics.QUEUED.labels(deployment=dep.id).dec()

    def _wake(self, deployment_id: str) -> None:
        """Tell the autoscaler at once (at most once a second) that requests wait at zero."""
        now = time.monotonic()
        if self.publish is None or not self.demand.should_wake(deployment_id, now):
            return
        msg = deploy_pb2.WakeRequest(deployment_id=deployment_id, source="router", ts=time.time(),
                                     parked=self.demand.parked(deployment_id))
        self.publish(subjects.wake(deployment_id), msg.SerializeToString())
        log.info("wake_sent", deployment=deployment_id, parked=msg.parked)

    async def _with_failover(
        self, route: Route, prompt: Sequence[int], ctx: RequestContext, summary: RequestSummary,
        open_call: Callable[[runtime_pb2_grpc.RuntimeStub], Any], buffered: bool = False,
    ) -> AsyncGenerator[Any, None]:
        """The one failover loop of generate and predict (rules in core/failover.py): pick a
        replica, stream its call; on a failure before the first response, try another.

        `buffered` (the caller answers only once the whole output is there: a request that
        does not stream): each call's responses are held until it ends, so a replica that
        fails part-way has sent the client nothing and the request is retried elsewhere, from
        the start, like one that failed before its first response. `summary.ttft_ms` is then
        the first response of the call that completed."""
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            decision, blocks = await self._acquire(route, prompt, ctx, tried)
            rid = decision.replica_id
            summary.replica_id = ctx.replica_id = rid
            summary.queue_wait_ms = (time.monotonic() - ctx.arrived) * 1000
            metrics.ROUTED.labels(deployment=route.deployment_id, replica=rid).inc()
            tried.add(rid)
            started = False
            held: list[Any] = []
            call = self._call(rid, ctx, blocks, open_call)
            try:
                async for resp in call:
                    if buffered:
                        if not held:
                            summary.ttft_ms = (time.monotonic() - ctx.arrived) * 1000
                        held.append(resp)
                        continue
                    started = True
                    yield resp
                for resp in held:
                    yield resp
                return
            except grpc.aio.AioRpcError as e:
                verdict = after_failure(e.code().name, started=started, details=e.details() or "")
                if verdict.next is Next.BAD_REQUEST:
                    raise BadRequest(e.details() or "invalid request") from None
                if verdict.next is Next.FAIL:
                    where = "mid-stream" if started else "before the first response"
                    raise ReplicaFailed(
                        f"replica {rid} failed {where}: {e.code().name} {e.details()}"
                    ) from None
                log.warning("replica_failed_retrying", replica=rid, code=e.code().name,
                            detail=e.details())
                metrics.RETRIES.labels(deployment=route.deployment_id).inc()
            finally:  # closed by our consumer at a yield: close the call now, not at GC
                await call.aclose()
        raise NoReplica(route.deployment_id, 0.0, f"{MAX_ATTEMPTS} replicas failed")

    async def _call(
        self, rid: str, ctx: RequestContext, blocks: int,
        open_call: Callable[[runtime_pb2_grpc.RuntimeStub], Any],
    ) -> AsyncGenerator[Any, None]:
        """One call to one replica, with its in-flight accounting and its fault noted."""
        entry = self.fleet.get(rid)
        if entry is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "replica gone")
        self.fleet.routed(rid, ctx.request_id, blocks, time.monotonic())
        self.demand.phase(entry.record.deployment, ctx.request_id, Phase.IN_FLIGHT,
                          time.monotonic())
        replica_fault = False
        opened = time.perf_counter()
        call = open_call(self.channels.stub(entry.record.grpc_address, rid))
        try:
            first = True
            async for resp in call:
                if first:
                    first = False
                    metrics.PHASE_FIRST_CHUNK.observe(time.perf_counter() - opened)
                    self.fleet.started(rid, ctx.request_id)
                yield resp
        except grpc.aio.AioRpcError as e:
            replica_fault = classify(e.code().name, e.details() or "") is Fault.REPLICA
            raise
        finally:
            call.cancel()  # the client went away: the runtime aborts and frees the blocks
            self.fleet.finished(rid, ctx.request_id, not replica_fault, time.monotonic())
            self.changed.notify()

    async def generate(
        self, route: Route, prompt: Sequence[int], sampling: runtime_pb2.SamplingParams,
        ctx: RequestContext, buffered: bool = False,
    ) -> AsyncGenerator[runtime_pb2.GenerateResponse, None]:
        """Stream from the chosen replica; retry elsewhere if it fails before the first token
        (`buffered`, for an answer sent whole: before the last one; see _with_failover).
        Closed early (the client left), it ends its call at once and records `cancelled`."""
        out = RequestSummary(prompt_tokens=len(prompt))
        request = runtime_pb2.GenerateRequest(
            request_id=ctx.request_id, prompt_token_ids=prompt, sampling=sampling,
            lora_name=route.lora_name or "",
        )
        started = False
        self.demand.arrive(route.deployment_id, ctx.request_id, len(prompt), time.monotonic())
        responses = self._with_failover(route, prompt, ctx, out,
                                        lambda stub: stub.Generate(request), buffered)
        try:
            async for resp in responses:
                if not started:
                    started = True
                    out.ttft_ms = out.ttft_ms or (time.monotonic() - ctx.arrived) * 1000
                out.completion_tokens += len(resp.token_ids)
                self.demand.generated(route.deployment_id, ctx.request_id, len(resp.token_ids),
                                      time.monotonic())
                if resp.HasField("usage"):
                    out.cached_tokens = resp.usage.cached_prompt_tokens
                yield resp
        except RouterError as e:
            out.outcome = outcome_of(e)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            out.outcome = CANCELLED
            raise
        finally:
            try:  # closed early (the client left): end the call now, not at GC
                await responses.aclose()
            finally:
                self.demand.done(route.deployment_id, ctx.request_id, time.monotonic())
                self._record(route, ctx, out)

    async def predict(self, route: Route, payload: bytes, ctx: RequestContext
                      ) -> AsyncGenerator[bytes, None]:
        """Call a python-model deployment, with generate's failover rule."""
        request = runtime_pb2.PredictRequest(request_id=ctx.request_id, json_input=payload)
        self.demand.arrive(route.deployment_id, ctx.request_id, 0, time.monotonic())
        responses = self._with_failover(route, [], ctx, RequestSummary(),
                                        lambda stub: stub.Predict(request))
        try:
            async for resp in responses:
                yield resp.json_output
        finally:
            try:
                await responses.aclose()
            finally:
                self.demand.done(route.deployment_id, ctx.request_id, time.monotonic())

    def demand_reports(self, router_id: str, deployment_ids: list[str]
                       ) -> list[deploy_pb2.DemandReport]:
        """This interval's DemandReport for each deployment (then a new interval)."""
        now, wall = time.monotonic(), time.time()
        out = []
        for dep_id in deployment_ids:
            f = self.demand.report(dep_id, now)
            out.append(deploy_pb2.DemandReport(
                router_id=router_id, deployment_id=dep_id, ts=wall, in_flight=f.in_flight,
                parked=f.parked, queued=f.queued, arrivals=f.arrivals,
                avg_concurrency=f.avg_concurrency, avg_in_flight_tokens=f.avg_tokens,
                interval_s=f.interval_s, prompt_tokens=f.prompt_tokens,
                completion_tokens=f.completion_tokens))
        return out

    def _record(self, route: Route, ctx: RequestContext, out: RequestSummary) -> None:
        """The request's one RequestRecord: published, and handed to the access entry."""
        e2e_ms = (time.monotonic() - ctx.arrived) * 1000
        metrics.REQUESTS.labels(deployment=route.deployment_id, outcome=out.outcome).inc()
        if out.ttft_ms:
            metrics.TTFT.labels(deployment=route.deployment_id).observe(out.ttft_ms / 1000)
        if self.publish is None and ctx.access is None:
            return
        rec = deploy_pb2.RequestRecord(
            request_id=ctx.request_id, deployment_id=route.deployment_id,
            replica_id=out.replica_id, queue_wait_ms=out.queue_wait_ms, ttft_ms=out.ttft_ms,
            prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
            cached_tokens=out.cached_tokens, outcome=out.outcome, ts=time.time(),
            model=route.deployment.model, lora_name=route.lora_name or "", e2e_ms=e2e_ms,
        )
        if ctx.access is not None:
            ctx.access.record = rec
        if self.publish is not None:
            self.publish(subjects.requests(route.deployment_id), rec.SerializeToString())
