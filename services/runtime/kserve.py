"""KServe v2 / Triton gRPC inference service over an Engine (does I/O: grpc.aio handlers).

Wire-compatible with Triton, so the unmodified `tritonclient.grpc` works; the tensor
conventions (LLM and python models) are in basalt.kserve.codec. Never import this module (it
loads basalt.pb.kserve_pb2) into a process that imports tritonclient.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import aclosing
from typing import Any

import grpc

from basalt.kserve import codec
from basalt.kserve.codec import InvalidInput, Response
from basalt.kserve.server import INTERNAL_MESSAGE, closing_stream, interleave, log_failure
from basalt.pb import kserve_pb2 as pb
from basalt.pb import kserve_pb2_grpc
from basalt.tokenizer import Tokenizer
from services.runtime.core.convert import sampling_from_proto
from services.runtime.core.engine import Engine, GenerateInput
from services.runtime.core.errors import (
    Draining,
    InvalidRequest,
    NotReady,
    RuntimeServiceError,
    UnknownModel,
)


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a failed request ends with."""
    if isinstance(exc, (InvalidRequest, InvalidInput)):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnknownModel):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, (NotReady, Draining)):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, RuntimeServiceError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE


class KServeServicer(kserve_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService for the one model this replica serves."""

    def __init__(
        self, engine: Engine, model_name: str, tokenizer: Tokenizer, is_ready: Callable[[], bool],
        on_first_token: Callable[[], None] | None = None,
    ) -> None:
        # Called once, at the first output this replica produces (its start's last phase).
        self.on_first_token = on_first_token
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.is_ready = is_ready
        self.is_python = engine.kind == codec.PYTHON_PLATFORM
        self.output_name = codec.output_name(engine.kind)

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.model_name and self.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return codec.server_metadata()

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self.model_name:
            await context.abort(*status_for(UnknownModel(request.name, self.model_name)))
        return codec.model_metadata(self.model_name, self.engine.kind)

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            values: list[bytes] = []
            async for chunk, _ in self._responses(request, streaming=False):
                values.extend(chunk)
            return codec.bytes_response(request, self.model_name, self.output_name, values, None)
        except Exception as e:  # noqa: BLE001  (every failure becomes a gRPC status)
            failure = e
        code, message = status_for(failure)
        log_failure(request.id, code, message, failure)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; their responses interleave, keyed by id."""
        async with aclosing(interleave(request_iterator, self._stream_one)) as responses:
            async for resp in responses:
                yield resp

    async def _stream_one(
        self, req: pb.ModelInferRequest, emit: Callable[[pb.ModelStreamInferResponse], None]
    ) -> None:
        try:
            async for response in self._responses(req, streaming=True):
                emit(codec.stream_response(req, self.model_name, self.output_name, response))
        except Exception as e:  # noqa: BLE001  (reported on the stream, which goes on)
            code, message = status_for(e)
            log_failure(req.id, code, message, e)
            emit(codec.stream_error(req, self.model_name, message))

    def _admit(self, req: pb.ModelInferRequest) -> None:
        if req.model_name != self.model_name:
            raise UnknownModel(req.model_name, self.model_name)
        if not self.is_ready():
            raise NotReady(f"model '{self.model_name}' is not ready (loading or draining)")
        codec.check_outputs(req, self.output_name)

    def _first_output(self) -> None:
        hook, self.on_first_token = self.on_first_token, None
        if hook is not None:
            hook()

    def _responses(self, req: pb.ModelInferRequest, streaming: bool) -> AsyncIterator[Response]:
        self._admit(req)
        if self.is_python:
            return self._python_responses(codec.python_payload(req), streaming)
        return self._llm_responses(codec.parse_llm_request(req), streaming)

    async def _python_responses(self, payload: Any, streaming: bool) -> AsyncIterator[Response]:
        shaper = codec.JsonResponses(streaming)
        async with closing_stream(self.engine.predict(payload)) as items:
            async for item in items:
                if self.on_first_token is not None:
                    self._first_output()
                for response in shaper.add(json.dumps(item).encode()):
                    yield response
        for response in shaper.finish():
            yield response

    async def _llm_responses(self, call: codec.LlmCall, streaming: bool) -> AsyncIterator[Response]:
        if not streaming:
            codec.refuse_stream_on_infer(call)
        inp = GenerateInput(
            request_id=f"kserve-{uuid.uuid4().hex}",
            prompt_token_ids=self.tokenizer.encode(call.text),
            sampling=sampling_from_proto(call.sampling),
            lora_name=call.lora_name,
        )
        shaper = codec.TextResponses(call, streaming)
        async with closing_stream(self.engine.generate(inp)) as chunks:
            async for chunk in chunks:
                if self.on_first_token is not None and chunk.token_ids:
                    self._first_output()
                last = chunk.finish_reason is not None
                for response in shaper.add(chunk.text, last):
                    yield response
                if last:
                    break
        for response in shaper.finish():
            yield response
