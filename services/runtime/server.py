"""The runtime's gRPC service: Generate, Predict, KV dump, LoRA (does I/O: grpc.aio)."""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import grpc

from basalt.kserve.server import refusing
from basalt.kvevents import stored_to_proto
from basalt.log import bind_request_id, clear_request_id, get_logger
from basalt.pb import events_pb2, runtime_pb2, runtime_pb2_grpc
from basalt.replicaauth import token_from_metadata, token_matches
from services.runtime.core.convert import chunk_to_proto, generate_input_from_proto
from services.runtime.core.engine import Engine, GenerateChunk
from services.runtime.core.errors import Draining, InvalidRequest, RuntimeServiceError
from services.runtime.core.request_phases import ENGINE_ACCEPTED

from . import metrics
from .publisher import KvEventPublisher, LoadReporter
from .pump import EnginePump

log = get_logger(__name__)


class InFlight:
    """Counts requests being served, so a drain knows when it is done."""

    def __init__(self) -> None:
        self.count = 0
        self.draining = False


class _RequestWatch:
    """One Generate's clock: its phases (core/request_phases.py) and latency metrics, observed
    as each engine chunk is read (on the pump's task, or in the handler for an engine that
    merges), not when its message is written."""

    __slots__ = ("accepted", "first", "last", "messages", "start", "svc", "tokens")

    def __init__(self, svc: RuntimeServicer, arrived: float) -> None:
        self.svc = svc
        self.start = self.last = time.monotonic()  # validated: the engine's clock starts here
        self.accepted = 0.0
        self.first = True
        self.messages = self.tokens = 0  # messages sent, tokens out of the engine
        svc._phase_receive.observe(self.start - arrived)

    def on_accepted(self) -> None:
        self.accepted = now = time.monotonic()
        self.svc._phase_engine_add.observe(now - self.start)

    def on_chunk(self, chunk: GenerateChunk) -> None:
        now = time.monotonic()
        svc = self.svc
        if chunk.token_ids:
            gap = now - self.last
            if self.first:
                self.first = False
                if svc.on_first_token is not None:
                    svc._first_token()
                svc._ttft.observe(gap)
                svc.load.ttft.add(now, gap * 1000)
                svc._phase_first_token.observe(now - (self.accepted or self.start))
            else:
                svc._itl.observe(gap)
                svc.load.itl.add(now, gap * 1000)
            self.last = now
            n = len(chunk.token_ids)
            self.tokens += n
            svc.load.generated_tokens += n
        if chunk.usage is not None:
            svc._observe_finish(chunk, now - self.start)


class RuntimeServicer(runtime_pb2_grpc.RuntimeServicer):
    def __init__(
        self,
        engine: Engine,
        model_name: str,
        replica_id: str,
        kv: KvEventPublisher,
        load: LoadReporter,
        record: Callable[[], events_pb2.ReplicaRecord],
        on_lora_change: Callable[[], None],
        lora_root: str = "",
        on_first_token: Callable[[], None] | None = None,
    ) -> None:
        self.engine = engine
        self.lora_root = os.path.realpath(lora_root) if lora_root else ""
        self.kv = kv
        self.load = load
        self.record = record
        self.on_lora_change = on_lora_change
        # Called once, at the first token (or Predict output) this replica ever sends; None after.
        self.on_first_token = on_first_token
        self.inflight = InFlight()
        self.labels = {"model": model_name, "replica": replica_id}
        # Labelled children looked up once: several are observed on every streamed chunk.
        labels = self.labels
        self._ttft = metrics.TTFT.labels(**labels)
        self._itl = metrics.ITL.labels(**labels)
        self._e2e = metrics.E2E.labels(**labels)
        self._prompt_tokens = metrics.PROMPT_TOKENS.labels(**labels)
        self._generation_tokens = metrics.GENERATION_TOKENS.labels(**labels)
        self._cache_hit_tokens = metrics.PREFIX_CACHE_HIT_TOKENS.labels(**labels)
        self._requests: dict[str, Any] = {}  # finished_reason -> counter child
        self._messages = metrics.STREAM_MESSAGES.labels(**labels)
        self._stream_tokens = metrics.STREAM_TOKENS.labels(**labels)
        phase = metrics.REQUEST_PHASE
        self._phase_receive = phase.labels(**labels, phase="receive")
        self._phase_engine_add = phase.labels(**labels, phase="engine_add")
        self._phase_first_token = phase.labels(**labels, phase="first_token")
        self._phase_send = phase.labels(**labels, phase="send")

    async def _refuse_if_draining(self, context: grpc.aio.ServicerContext) -> None:
        if self.inflight.draining:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(Draining("replica is draining")))

    async def Generate(
        self, request: runtime_pb2.GenerateRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runtime_pb2.GenerateResponse]:
        """Stream the engine's tokens as it makes them. Each message carries what the engine
        made while the last write was in flight: one message per engine step for a client
        that keeps up, fewer and larger for one that lags (no timer). An engine whose stream
        merges on its own (`merges_outputs`: vLLM's collector, the sim's queue) is read here
        directly; any other through an `EnginePump` task that merges for it."""
        arrived = time.monotonic()
        await self._refuse_if_draining(context)
        try:
            inp = generate_input_from_proto(request, fallback_id=uuid.uuid4().hex)
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        bind_request_id(inp.request_id)
        watch = _RequestWatch(self, arrived)
        on_chunk, send = watch.on_chunk, self._phase_send
        self.inflight.count += 1
        # Seen by the engine's generator (here, or copied into the pump's task): engine_add.
        ENGINE_ACCEPTED.set(watch.on_accepted)
        stream = pump = None
        monotonic = time.monotonic
        try:
            stream = self.engine.generate(inp)
            if getattr(self.engine, "merges_outputs", False):
                async for chunk in stream:
                    on_chunk(chunk)
                    message = chunk_to_proto(chunk)
                    t0 = monotonic()
                    yield message
                    send.observe(monotonic() - t0)
                    watch.messages += 1
            else:
                pump = EnginePump(stream, on_chunk)
                while (merged := await pump.next()) is not None:
                    message = chunk_to_proto(merged)
                    t0 = monotonic()
                    yield message
                    send.observe(monotonic() - t0)
                    watch.messages += 1
        except InvalidRequest as e:
            log.info("generate_rejected", reason=str(e))
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        finally:
            ENGINE_ACCEPTED.set(None)
            if pump is not None:
                await pump.aclose()  # client gone: the engine aborts the sequence
            elif stream is not None:
                await stream.aclose()
            self._messages.inc(watch.messages)
            self._stream_tokens.inc(watch.tokens)
            self.inflight.count -= 1
            clear_request_id()

    def _first_token(self) -> None:
        hook, self.on_first_token = self.on_first_token, None
        if hook is not None:
            hook()

    def _observe_finish(self, chunk: GenerateChunk, elapsed_s: float) -> None:
        usage = chunk.usage
        assert usage is not None
        self._e2e.observe(elapsed_s)
        self._prompt_tokens.inc(usage.prompt_tokens)
        self._generation_tokens.inc(usage.completion_tokens)
        self._cache_hit_tokens.inc(usage.cached_prompt_tokens)
        reason = chunk.finish_reason.value if chunk.finish_reason else "unknown"
        counter = self._requests.get(reason)
        if counter is None:
            counter = self._requests[reason] = metrics.REQUESTS.labels(
                **self.labels, finished_reason=reason)
        counter.inc()

    async def Predict(
        self, request: runtime_pb2.PredictRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[runtime_pb2.PredictResponse]:
        await self._refuse_if_draining(context)
        try:
            payload = json.loads(request.json_input or b"null")
        except ValueError as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"json_input is not JSON: {e}")
        self.inflight.count += 1
        stream = None
        try:
            stream = self.engine.predict(payload)
            async for item in stream:
                if self.on_first_token is not None:
                    self._first_token()
                yield runtime_pb2.PredictResponse(json_output=json.dumps(item).encode())
        except InvalidRequest as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        except RuntimeServiceError as e:
            await context.abort(grpc.StatusCode.INTERNAL, str(e))
        finally:
            if stream is not None:
                await stream.aclose()
            self.inflight.count -= 1

    async def DumpKvState(
        self, request: runtime_pb2.DumpKvStateRequest, context: grpc.aio.ServicerContext
    ) -> runtime_pb2.KvStateDump:
        seq, blocks = self.kv.dump()
        return runtime_pb2.KvStateDump(
            replica_id=self.kv.replica_id,
            seq=seq,
            epoch=self.kv.epoch,
            blocks=[stored_to_proto(b) for b in blocks],
        )

    async def LoadLora(
        self, request: runtime_pb2.LoadLoraRequest, context: grpc.aio.ServicerContext
    ) -> runtime_pb2.LoadLoraResponse:
        if not request.lora_name or not request.lora_path:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "lora_name and lora_path are both required"
            )
        if not self._under_lora_root(request.lora_path):
            await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                                "lora_path: outside this replica's --lora-root"
                                if self.lora_root else "LoadLora is off: no --lora-root set")
        try:
            await self.engine.load_lora(request.lora_name, request.lora_path)
        except (InvalidRequest, ValueError, FileNotFoundError) as e:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"cannot load LoRA: {e}")
        self.on_lora_change()
        return runtime_pb2.LoadLoraResponse()

    def _under_lora_root(self, path: str) -> bool:
        if not self.lora_root:
            return False
        real = os.path.realpath(path)
        return real == self.lora_root or real.startswith(self.lora_root.rstrip("/") + "/")

    async def UnloadLora(
        self, request: runtime_pb2.UnloadLoraRequest, context: grpc.aio.ServicerContext
    ) -> runtime_pb2.UnloadLoraResponse:
        if request.lora_name not in self.engine.loras():
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, f"LoRA adapter {request.lora_name!r} is not loaded"
            )
        await self.engine.unload_lora(request.lora_name)
        self.on_lora_change()
        return runtime_pb2.UnloadLoraResponse()


HEALTH_PREFIX = "/grpc.health.v1.Health/"


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Every RPC but health needs `authorization: Bearer <this replica's token>`: the router
    and the control plane derive it from the platform secret; nobody else has it."""

    def __init__(self, token: str) -> None:
        self.token = token

    async def intercept_service(self, continuation, details):  # type: ignore[no-untyped-def]
        handler = await continuation(details)
        if handler is None or details.method.startswith(HEALTH_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization")
        given = token_from_metadata(header if isinstance(header, str) else None)
        if token_matches(self.token, given):
            return handler
        log.info("runtime_unauthenticated", method=details.method, credential_given=bool(given))
        return refusing(handler, grpc.StatusCode.UNAUTHENTICATED,
                        "this replica answers only the platform (missing or wrong credential)")
