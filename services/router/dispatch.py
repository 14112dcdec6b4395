"""Sends a request to the replica the policy picks: queueing, failover, request records (does I/O)."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace

import grpc

from basalt import subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2, runtime_pb2, runtime_pb2_grpc

from . import metrics
from .deployments import Route
from .errors import BadRequest, NoReplica, QueueFull, ReplicaFailed, RouterError
from .fleet import Fleet
from .index import PrefixIndex
from .policy import RoundRobinState, choose
from .types import Decision, OwnBlockHash, PolicyConfig, PolicyKind, RegionLatency, RouteRequest

log = get_logger(__name__)

RETRYABLE = {
    grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN,
    grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.CANCELLED, grpc.StatusCode.ABORTED,
}
MAX_ATTEMPTS = 3


@dataclass(slots=True)
class RequestContext:
    request_id: str
    client_region: str | None = None
    session_key: str | None = None
    arrived: float = field(default_factory=time.monotonic)
    # The replica now serving the request (set when one is chosen).
    replica_id: str = ""
    # The prompt's own block hashes, by block size (computed on the first decision).
    hashes: dict[int, list[OwnBlockHash]] = field(default_factory=dict)


@dataclass(slots=True)
class Outcome:
    """What the router learned while serving one request (for the request record)."""

    replica_id: str = ""
    queue_wait_ms: float = 0.0
    ttft_ms: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    outcome: str = "ok"


class Channels:
    """One gRPC channel per replica address, reused across requests."""

    def __init__(self) -> None:
        self._channels: dict[str, grpc.aio.Channel] = {}

    def stub(self, address: str) -> runtime_pb2_grpc.RuntimeStub:
        ch = self._channels.get(address)
        if ch is None:
            ch = self._channels[address] = grpc.aio.insecure_channel(address)
        return runtime_pb2_grpc.RuntimeStub(ch)

    async def drop(self, address: str) -> None:
        ch = self._channels.pop(address, None)
        if ch is not None:
            await ch.close()

    async def close(self) -> None:
        for address in list(self._channels):
            await self.drop(address)


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
        self.changed = asyncio.Event()
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
        self, route: Route, prompt: list[int], ctx: RequestContext, exclude: set[str]
    ) -> tuple[Decision | None, int]:
        """Pick a replica now (or None); also returns the request's block count."""
        dep = route.deployment
        now = time.monotonic()
        views = [v for v in self.fleet.views(dep.id, now) if v.replica_id not in exclude]
        if not views:
            return None, 0
        block_size = views[0].kv_block_size
        hashes = ctx.hashes.get(block_size)
        if hashes is None:  # once per request, not on every retry or queue wake-up
            hashes = ctx.hashes[block_size] = self.index.hasher(prompt, block_size, route.lora_name)
        overlap = self.index.match(hashes)
        request = RouteRequest(
            num_prompt_tokens=len(prompt), num_blocks=len(hashes), lora_name=route.lora_name,
            region=ctx.client_region or self.region, session_key=ctx.session_key,
        )
        decision = choose(
            request, views, overlap, self.policy_for(dep), now=now, latency=self.latency,
            rng=self.rng, rr_state=self._rr.setdefault(dep.id, RoundRobinState()),
        )
        return decision, max(len(hashes), -(-len(prompt) // block_size))

    async def _acquire(
        self, route: Route, prompt: list[int], ctx: RequestContext, exclude: set[str]
    ) -> tuple[Decision, int]:
        """Wait in the deployment's bounded queue until a replica can take the request."""
        dep = route.deployment
        decision, blocks = self.decide(route, prompt, ctx, exclude)
        if decision is not None:
            return decision, blocks
        limit = dep.spec.queue_limit
        timeout = dep.spec.queue_timeout_s or 30.0
        if self._waiting.get(dep.id, 0) >= limit:
            raise QueueFull(dep.id, limit)
        self._waiting[dep.id] = self._waiting.get(dep.id, 0) + 1
        metrics.QUEUED.labels(deployment=dep.id).inc()
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline:
                self.changed.clear()
                try:
                    await asyncio.wait_for(self.changed.wait(), timeout=0.05)
                except TimeoutError:
                    pass
                decision, blocks = self.decide(route, prompt, ctx, exclude)
                if decision is not None:
                    return decision, blocks
            why = "none ready" if not self.fleet.views(dep.id, time.monotonic()) else "all busy"
            raise NoReplica(dep.id, timeout, why)
        finally:
            self._waiting[dep.id] -= 1
            metrics.QUEUED.labels(deployment=dep.id).dec()

    async def generate(
        self, route: Route, prompt: list[int], sampling: runtime_pb2.SamplingParams,
        ctx: RequestContext,
    ) -> AsyncIterator[runtime_pb2.GenerateResponse]:
        """Stream from the chosen replica; retry elsewhere if it fails before the first token."""
        out = Outcome(prompt_tokens=len(prompt))
        tried: set[str] = set()
        try:
            for attempt in range(MAX_ATTEMPTS):
                decision, blocks = await self._acquire(route, prompt, ctx, tried)
                rid = decision.replica_id
                out.replica_id = ctx.replica_id = rid
                metrics.ROUTED.labels(deployment=route.deployment_id, replica=rid).inc()
                out.queue_wait_ms = (time.monotonic() - ctx.arrived) * 1000
                tried.add(rid)
                started = False
                try:
                    async for resp in self._stream(rid, route, prompt, sampling, ctx, blocks):
                        if not started:
                            started = True
                            out.ttft_ms = (time.monotonic() - ctx.arrived) * 1000
                        out.completion_tokens += len(resp.token_ids)
                        if resp.HasField("usage"):
                            out.cached_tokens = resp.usage.cached_prompt_tokens
                        yield resp
                    return
                except grpc.aio.AioRpcError as e:
                    if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                        raise BadRequest(e.details() or "invalid request") from None
                    if started or e.code() not in RETRYABLE:
                        raise ReplicaFailed(
                            f"replica {rid} failed mid-stream: {e.code().name} {e.details()}"
                        ) from None
                    log.warning("replica_failed_retrying", replica=rid, attempt=attempt,
                                code=e.code().name, detail=e.details())
                    metrics.RETRIES.labels(deployment=route.deployment_id).inc()
            raise NoReplica(route.deployment_id, 0.0, f"{MAX_ATTEMPTS} replicas failed")
        except RouterError as e:
            out.outcome = _outcome_of(e)
            raise
        except (asyncio.CancelledError, GeneratorExit):
            out.outcome = "cancelled"
            raise
        finally:
            self._record(route, ctx, out)

    async def _stream(
        self, rid: str, route: Route, prompt: list[int], sampling: runtime_pb2.SamplingParams,
        ctx: RequestContext, blocks: int,
    ) -> AsyncIterator[runtime_pb2.GenerateResponse]:
        state = self.fleet.get(rid)
        if state is None:
            raise grpc.aio.AioRpcError(grpc.StatusCode.UNAVAILABLE, None, None, "replica gone")
        request = runtime_pb2.GenerateRequest(
            request_id=ctx.request_id, prompt_token_ids=prompt, sampling=sampling,
            lora_name=route.lora_name or "",
        )
        self.fleet.routed(rid, ctx.request_id, blocks, time.monotonic())
        replica_fault = False
        call = self.channels.stub(state.record.grpc_address).Generate(request)
        try:
            async for resp in call:
                self.fleet.started(rid, ctx.request_id)
                yield resp
        except grpc.aio.AioRpcError as e:
            replica_fault = e.code() != grpc.StatusCode.INVALID_ARGUMENT
            raise
        finally:
            call.cancel()  # the client went away: the runtime aborts and frees the blocks
            self.fleet.finished(rid, ctx.request_id, not replica_fault, time.monotonic())
            self.changed.set()

    async def predict(self, route: Route, payload: bytes, ctx: RequestContext) -> AsyncIterator[bytes]:
        """Call a python-model deployment; retries before the first output like generate."""
        tried: set[str] = set()
        for _ in range(MAX_ATTEMPTS):
            decision, _ = await self._acquire(route, [], ctx, tried)
            rid = ctx.replica_id = decision.replica_id
            tried.add(rid)
            state = self.fleet.get(rid)
            if state is None:
                continue
            started = False
            self.fleet.routed(rid, ctx.request_id, 0, time.monotonic())
            replica_fault = False
            try:
                call = self.channels.stub(state.record.grpc_address).Predict(
                    runtime_pb2.PredictRequest(request_id=ctx.request_id, json_input=payload)
                )
                async for resp in call:
                    started = True
                    yield resp.json_output
                return
            except grpc.aio.AioRpcError as e:
                if e.code() == grpc.StatusCode.INVALID_ARGUMENT:
                    raise BadRequest(e.details() or "invalid input") from None
                replica_fault = e.code() != grpc.StatusCode.INTERNAL  # INTERNAL: the model raised
                if started or e.code() not in RETRYABLE or not replica_fault:
                    raise ReplicaFailed(f"replica {rid}: {e.code().name} {e.details()}") from None
            finally:
                self.fleet.finished(rid, ctx.request_id, not replica_fault, time.monotonic())
                self.changed.set()
        raise NoReplica(route.deployment_id, 0.0, f"{MAX_ATTEMPTS} replicas failed")

    def _record(self, route: Route, ctx: RequestContext, out: Outcome) -> None:
        e2e_ms = (time.monotonic() - ctx.arrived) * 1000
        metrics.REQUESTS.labels(deployment=route.deployment_id, outcome=out.outcome).inc()
        if out.ttft_ms:
            metrics.TTFT.labels(deployment=route.deployment_id).observe(out.ttft_ms / 1000)
        if self.publish is None:
            return
        rec = deploy_pb2.RequestRecord(
            request_id=ctx.request_id, deployment_id=route.deployment_id,
            replica_id=out.replica_id, queue_wait_ms=out.queue_wait_ms, ttft_ms=out.ttft_ms,
            prompt_tokens=out.prompt_tokens, completion_tokens=out.completion_tokens,
            cached_tokens=out.cached_tokens, outcome=out.outcome, ts=time.time(),
            model=route.deployment.model, lora_name=route.lora_name or "", e2e_ms=e2e_ms,
        )
        self.publish(subjects.requests(route.deployment_id), rec.SerializeToString())


def _outcome_of(e: RouterError) -> str:
    if isinstance(e, BadRequest):
        return "client_error"
    if isinstance(e, QueueFull):
        return "rejected"
    if isinstance(e, NoReplica):
        return "timeout"
    return "replica_error"
