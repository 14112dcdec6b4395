"""KServe v2 / Triton gRPC front door of the router (does I/O: grpc.aio server and handlers).

Wire-compatible with Triton, so the unmodified `tritonclient.grpc` works; the tensor conventions
are those of basalt.kserve.codec (LLM: `text_input` -> `text_output`; python models: JSON). A
request's `model_name` resolves like the OpenAI `model` field (deployment id, model,
model@environment, LoRA adapter name). LLM text is tokenized with the deployment's tokenizer (no
chat template) and sent through the dispatcher, so routing, queueing and failover apply. With a
verifier, every RPC but grpc.health.v1 needs an API key in metadata `authorization`
(`Bearer <key>` or `Api-Key <key>`). Never import this module into a process that imports
tritonclient (both register the `inference.*` protobuf symbols).

Each inference request (a ModelInfer call, each request on a ModelStreamInfer stream, a call
refused for its key) writes the HTTP door's access line (`access_log.py`), with method `GRPC`,
the RPC's path as its route and, as its status, the HTTP status the same outcome has on the
HTTP door (200 when served), so one query reads both doors.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from basalt.apikeys import KeyStoreUnavailable, KeyVerifier, allows_model, key_from_header
from basalt.kserve import codec
from basalt.kserve.codec import InvalidInput, Response
from basalt.kserve.server import (
    INTERNAL_MESSAGE,
    closing_stream,
    interleave,
    log_failure,
    refusing,
)
from basalt.log import get_logger
from basalt.pb import kserve_pb2 as pb
from basalt.pb import kserve_pb2_grpc, runtime_pb2
from services.router.core.access import AccessEntry
from services.router.core.deployments import DeploymentTable, Route
from services.router.core.errors import (
    AuthUnavailable,
    BadRequest,
    Forbidden,
    ModelNotFound,
    RouterError,
    Unauthorized,
)
from services.router.core.ratelimit import KeyLimits
from services.router.status_codes import grpc_code, http_status

from . import metrics
from .access_log import write_access
from .dispatch import Dispatcher, RequestContext
from .tokenizers import Tokenizers

log = get_logger(__name__)

KSERVE_SERVICE = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].full_name
SERVICE_NAMES = (KSERVE_SERVICE, health.SERVICE_NAME, reflection.SERVICE_NAME)
OPEN_METHOD_PREFIX = f"/{health.SERVICE_NAME}/"  # probes carry no key, as HTTP's /health
STOP_GRACE_S = 1.0
GRPC_METHOD = "GRPC"  # an access line's method on this door
INFER_ROUTE = f"/{KSERVE_SERVICE}/ModelInfer"
STREAM_ROUTE = f"/{KSERVE_SERVICE}/ModelStreamInfer"


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a failed request ends with."""
    if isinstance(exc, RouterError):
        return grpc_code(exc), exc.message
    if isinstance(exc, InvalidInput):
        return grpc.StatusCode.INVALID_ARGUMENT, exc.message
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


def note_failure(entry: AccessEntry | None, exc: BaseException) -> None:
    """The failure on the request's access entry, as the HTTP door would answer it."""
    if entry is None:
        return
    if isinstance(exc, RouterError):
        entry.refused(http_status(exc), exc)
    elif isinstance(exc, InvalidInput):
        entry.refused(400, code="invalid_input")
    else:
        entry.refused(500, code="internal_error")


def with_lora(route: Route, lora_name: str | None) -> Route:
    """The route under the request's `lora_name` parameter, if it names a listed adapter."""
    if not lora_name or lora_name == route.lora_name:
        return route
    dep = route.deployment
    if route.lora_name:
        raise BadRequest(
            f"lora_name {lora_name!r} conflicts with the model name, which is adapter "
            f"{route.lora_name!r}"
        )
    listed = sorted(a.name for a in dep.spec.loras)
    if lora_name not in listed:
        raise BadRequest(f"deployment {dep.id!r} has no LoRA adapter {lora_name!r} ({listed})")
    return Route(dep, lora_name)


class RouterKServeServicer(kserve_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService over every deployment the router knows."""

    def __init__(
        self, table: DeploymentTable, dispatcher: Dispatcher, tokenizers: Tokenizers,
        region_header: str = "x-basalt-region", session_header: str = "x-session-id",
        verifier: KeyVerifier | None = None, limits: KeyLimits | None = None,
        access_log: bool = True,
    ) -> None:  # fmt: skip
        self.verifier = verifier
        self.access_log = access_log
        self.limits = limits or KeyLimits()
        self.table = table
        self.dispatcher = dispatcher
        self.tokenizers = tokenizers
        self.region_header = region_header.lower()
        self.session_header = session_header.lower()

    def _route(self, name: str) -> Route:
        route = self.table.resolve(name)
        if route is None:
            raise ModelNotFound(name)
        return route

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=bool(self.table.model_names()))

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        route = self.table.resolve(request.name)
        views = self.dispatcher.fleet.candidates(route.deployment_id, time.monotonic()) if route else []
        return pb.ModelReadyResponse(ready=bool(views))

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return codec.server_metadata()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        try:
            route = self._route(request.name)
        except RouterError as e:
            await context.abort(*status_for(e))
        return codec.model_metadata(request.name, route.deployment.spec.engine)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        ctx = self._context(context, INFER_ROUTE)
        try:
            try:
                values: list[bytes] = []
                output = codec.LLM_OUTPUT
                async for output, (chunk, _) in self._responses(request, ctx, streaming=False):
                    values.extend(chunk)
                return codec.bytes_response(request, request.model_name, output, values, None)
            except Exception as e:  # noqa: BLE001  (every failure becomes a gRPC status)
                failure = e
            code, message = status_for(failure)
            note_failure(ctx.access, failure)
            log_failure(ctx.request_id, code, message, failure)
            await context.abort(code, message)
            raise AssertionError("unreachable: context.abort raises")
        finally:
            if ctx.access is not None:
                write_access(ctx.access)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; their responses interleave, keyed by id."""

        def handle(
            req: pb.ModelInferRequest, emit: Callable[[pb.ModelStreamInferResponse], None]
        ) -> Coroutine[Any, Any, None]:
            return self._stream_one(req, self._context(context, STREAM_ROUTE), emit)

        async with aclosing(interleave(request_iterator, handle)) as responses:
            async for resp in responses:
                yield resp

    async def _stream_one(
        self, req: pb.ModelInferRequest, ctx: RequestContext,
        emit: Callable[[pb.ModelStreamInferResponse], None],
    ) -> None:  # fmt: skip
        try:
            async for output, response in self._responses(req, ctx, streaming=True):
                emit(codec.stream_response(req, req.model_name, output, response))
        except Exception as e:  # noqa: BLE001  (reported on the stream, which goes on)
            code, message = status_for(e)
            note_failure(ctx.access, e)
            log_failure(ctx.request_id, code, message, e)
            emit(codec.stream_error(req, req.model_name, message))
        finally:
            if ctx.access is not None:
                write_access(ctx.access)

    def _context(self, context: Any, rpc: str) -> RequestContext:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        rid = f"kserve-{uuid.uuid4().hex}"
        access = None
        if self.access_log:
            access = AccessEntry(rid, GRPC_METHOD, rpc, time.perf_counter(),
                                 stream=rpc == STREAM_ROUTE)
        return RequestContext(
            request_id=rid,
            client_region=metadata.get(self.region_header),
            session_key=metadata.get(self.session_header),
            authorization=metadata.get("authorization"),
            access=access,
        )

    async def _responses(
        self, req: pb.ModelInferRequest, ctx: RequestContext, streaming: bool
    ) -> AsyncIterator[tuple[str, Response]]:
        """(output name, response) per response to send."""
        if ctx.access is not None:
            ctx.access.model = req.model_name
        route = self._route(req.model_name)
        if ctx.access is not None:
            ctx.access.deployment = route.deployment_id
        key_id = await self._authorize(ctx.authorization, route)
        if ctx.access is not None and key_id:
            ctx.access.key_id = key_id
        try:
            async for item in self._served(route, req, ctx, streaming):
                yield item
        finally:
            if key_id:
                self.limits.release(key_id)

    async def _authorize(self, header: str | None, route: Route) -> str:
        """The key's model list and limits, checked once the model is known (the interceptor
        checked the key itself); returns the key id holding a concurrency slot, or ''."""
        if self.verifier is None:
            return ""
        rec = await self.verifier.verify(key_from_header(header))
        if rec is None:
            raise Unauthorized("missing, invalid or expired API key")
        if not allows_model(rec, route.deployment.model):
            raise Forbidden(route.deployment.model)
        over = self.limits.refusal(rec.key_id, rec.rate_per_s, rec.max_concurrency,
                                   time.monotonic())
        if over is not None:
            raise over
        return rec.key_id

    async def _served(
        self, route: Route, req: pb.ModelInferRequest, ctx: RequestContext, streaming: bool
    ) -> AsyncIterator[tuple[str, Response]]:
        platform = route.deployment.spec.engine
        output = codec.output_name(platform)
        codec.check_outputs(req, output)
        if platform == codec.PYTHON_PLATFORM:
            responses = self._python_responses(route, req, ctx, streaming)
        else:
            responses = self._llm_responses(route, codec.parse_llm_request(req), ctx, streaming)
        async for response in responses:
            yield output, response

    async def _python_responses(
        self, route: Route, req: pb.ModelInferRequest, ctx: RequestContext, streaming: bool
    ) -> AsyncIterator[Response]:
        payload = json.dumps(codec.python_payload(req)).encode()
        shaper = codec.JsonResponses(streaming)
        async with closing_stream(self.dispatcher.predict(route, payload, ctx)) as docs:
            async for doc in docs:
                for response in shaper.add(doc):
                    yield response
        for response in shaper.finish():
            yield response

    async def _llm_responses(
        self, route: Route, call: codec.LlmCall, ctx: RequestContext, streaming: bool
    ) -> AsyncIterator[Response]:
        if not streaming:
            codec.refuse_stream_on_infer(call)
        route = with_lora(route, call.lora_name)
        t0 = time.perf_counter()
        prompt = await self.tokenizers.encode(route.deployment, call.text)  # off the loop
        metrics.PHASE_TOKENIZE.observe(time.perf_counter() - t0)
        if not prompt:
            raise BadRequest("input 'text_input' is empty")
        shaper = codec.TextResponses(call, streaming)
        # ModelInfer answers once, whole: a replica failing part-way is retried elsewhere.
        stream = self.dispatcher.generate(route, prompt, call.sampling, ctx,
                                          buffered=not streaming)
        # Read to the end: the request record then says "ok".
        async with closing_stream(stream) as chunks:
            async for chunk in chunks:
                last = chunk.finish_reason != runtime_pb2.FINISH_REASON_UNSPECIFIED
                for response in shaper.add(chunk.text, last):
                    yield response
        for response in shaper.finish():
            yield response


# ---- authentication --------------------------------------------------------------------------


def _refusing(handler: grpc.RpcMethodHandler, error: RouterError) -> grpc.RpcMethodHandler:
    return refusing(handler, grpc_code(error), error.message)


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Refuses an RPC without a valid key in metadata `authorization` before its handler runs."""

    def __init__(self, verifier: KeyVerifier, access_log: bool = True) -> None:
        self.verifier = verifier
        self.access_log = access_log

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_METHOD_PREFIX):
            return handler
        metadata = dict(details.invocation_metadata or ())
        header = metadata.get("authorization")
        try:
            if await self.verifier.verify(
                    key_from_header(header if isinstance(header, str) else None)):
                return handler
        except KeyStoreUnavailable as e:
            return self._refused(handler, details.method, AuthUnavailable(str(e)))
        if not self.access_log:  # else the access line says it
            log.info("kserve_unauthenticated", method=details.method, key_given=bool(header))
        return self._refused(handler, details.method, Unauthorized("missing or invalid API key"))

    def _refused(self, handler: grpc.RpcMethodHandler, method: str,
                 error: RouterError) -> grpc.RpcMethodHandler:
        """A refusing handler; an inference call refused also writes its access line."""
        if self.access_log and method in (INFER_ROUTE, STREAM_ROUTE):
            entry = AccessEntry(f"kserve-{uuid.uuid4().hex}", GRPC_METHOD, method,
                                time.perf_counter(), stream=method == STREAM_ROUTE)
            entry.refused(http_status(error), error)
            write_access(entry)
        return _refusing(handler, error)


# ---- the server ------------------------------------------------------------------------------


@dataclass(slots=True)
class _Running:
    server: grpc.aio.Server
    health: Any  # grpc_health's aio HealthServicer
    keeper: asyncio.Task[None] | None = None


_RUNNING: dict[int, _Running] = {}  # port -> a started server, held until stop_kserve_servers


async def _keep(port: int, running: _Running) -> None:
    """Wait for the server to stop. When asyncio.run ends first, it cancels this task and
    grpc's own: then close the server here, which cannot be graceful any more but is quiet."""
    try:
        await running.server.wait_for_termination()
    except asyncio.CancelledError:
        if _RUNNING.pop(port, None) is not None:
            try:
                await running.server.stop(None)
            except asyncio.CancelledError:  # grpc's main loop task was cancelled with this one
                pass
            log.info("kserve_stopped", port=port, graceful=False)
        raise


async def start_kserve_server(
    settings: Any, table: DeploymentTable, dispatcher: Dispatcher, tokenizers: Tokenizers,
    verifier: KeyVerifier | None,
) -> int:  # fmt: skip
    """Start the KServe v2 gRPC server on settings.grpc_host:grpc_port; returns the bound port."""
    access_log = bool(getattr(settings, "access_log", True))
    interceptors = [ApiKeyInterceptor(verifier, access_log)] if verifier is not None else []
    # Per HTTP/2 connection: at most this many calls at once (ModelStreamInfer also bounds
    # the requests in flight on one stream, basalt.kserve.server.interleave).
    options = [("grpc.max_concurrent_streams", int(getattr(settings, "max_streams_per_connection", 100)))]
    server = grpc.aio.server(interceptors=interceptors, options=options)
    servicer = RouterKServeServicer(
        table, dispatcher, tokenizers,
        getattr(settings, "region_header", "x-basalt-region"),
        getattr(settings, "session_header", "x-session-id"), verifier, access_log=access_log,
    )  # fmt: skip
    kserve_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(SERVICE_NAMES, server)
    port = server.add_insecure_port(f"{settings.grpc_host}:{settings.grpc_port}")
    await server.start()
    for name in ("", KSERVE_SERVICE):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    running = _RUNNING[port] = _Running(server, health_servicer)
    running.keeper = asyncio.create_task(_keep(port, running), name=f"kserve-keeper-{port}")
    log.info("kserve_started", address=f"{settings.grpc_host}:{port}", auth=verifier is not None)
    return port


async def stop_kserve_servers(grace_s: float = STOP_GRACE_S) -> None:
    """Stop every server start_kserve_server started: health NOT_SERVING first, then in-flight
    calls get `grace_s` to finish. Call it before closing the dispatcher's channels; a server
    never stopped just closes with the event loop."""
    while _RUNNING:
        port, running = _RUNNING.popitem()
        await running.health.enter_graceful_shutdown()
        await running.server.stop(grace_s)
        if running.keeper is not None:
            await running.keeper  # returns: the server has terminated
        log.info("kserve_stopped", port=port, graceful=True)
