"""KServe v2 / Triton gRPC inference service over an Engine (does I/O: grpc.aio handlers).

Wire-compatible with Triton, so the unmodified `tritonclient.grpc` works. Never import this
module (it loads basalt.pb.kserve_pb2) into a process that imports tritonclient.

LLM engines follow Triton's vLLM / TensorRT-LLM backend convention. Inputs: `text_input` (BYTES,
shape [1] or [1, 1]); optional `max_tokens`, `top_k`, `seed` / `random_seed` (any integer type),
`temperature`, `top_p` (FP16/32/64), `stream`, `exclude_input_in_output`, `ignore_eos` (BOOL),
`sampling_parameters` (BYTES, a JSON object, as the vLLM backend takes). Sampling fields
(max_tokens, temperature, top_p, top_k (-1 = off), seed, stop, stop_token_ids, ignore_eos,
lora_name) are also read from request `parameters`; input tensors win over `sampling_parameters`,
which wins over request parameters. Output: `text_output` (BYTES). As in Triton's backends,
the prompt text is prepended to the output unless `exclude_input_in_output` is true.
ModelInfer returns the whole text (stream=true is refused there); ModelStreamInfer streams one
response per text delta unless the request sets stream=false, and marks every response with the
`triton_final_response` parameter (true on the last one).

The python engine (engine.kind == "python") takes JSON: a single BYTES input named `json` holding
one JSON document is passed to predict() as-is; otherwise the inputs become a dict
{name: value}, where a one-element tensor gives its scalar and a larger one a nested list in its
shape (BYTES as UTF-8 text). Output: `output`, BYTES, one JSON document per item. ModelInfer
sends them all in one response (shape [n]; n = 1 for a plain return); ModelStreamInfer sends
each item as the model yields it, then an empty final response (shape [0]).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import json
import math
import struct
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Protocol

import grpc

from basalt.log import get_logger
from basalt.pb import kserve_pb2 as pb
from basalt.pb import kserve_pb2_grpc

from .engine import Engine, GenerateInput, SamplingParams
from .errors import Draining, InvalidRequest, RuntimeServiceError

log = get_logger(__name__)

SERVER_NAME = "basalt"
try:
    SERVER_VERSION = importlib.metadata.version("basalt")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    SERVER_VERSION = "0+unknown"
FINAL_FLAG = "triton_final_response"

_RAW_FORMATS = {
    "BOOL": "?", "INT8": "b", "INT16": "h", "INT32": "i", "INT64": "q", "UINT8": "B",
    "UINT16": "H", "UINT32": "I", "UINT64": "Q", "FP16": "e", "FP32": "f", "FP64": "d",
}  # fmt: skip
_CONTENTS_FIELD = {
    "BOOL": "bool_contents", "INT8": "int_contents", "INT16": "int_contents",
    "INT32": "int_contents", "INT64": "int64_contents", "UINT8": "uint_contents",
    "UINT16": "uint_contents", "UINT32": "uint_contents", "UINT64": "uint64_contents",
    "FP32": "fp32_contents", "FP64": "fp64_contents", "BYTES": "bytes_contents",
}  # fmt: skip
_INTS = ("INT8", "INT16", "INT32", "INT64", "UINT8", "UINT16", "UINT32", "UINT64")
_FLOATS = ("FP16", "FP32", "FP64")
# LLM input name -> (accepted datatypes, datatype advertised in ModelMetadata)
LLM_INPUTS: dict[str, tuple[tuple[str, ...], str]] = {
    "text_input": (("BYTES",), "BYTES"),
    "max_tokens": (_INTS, "INT32"),
    "stream": (("BOOL",), "BOOL"),
    "temperature": (_FLOATS, "FP32"),
    "top_p": (_FLOATS, "FP32"),
    "top_k": (_INTS, "INT32"),
    "seed": (_INTS, "UINT64"),
    "random_seed": (_INTS, "UINT64"),
    "exclude_input_in_output": (("BOOL",), "BOOL"),
    "ignore_eos": (("BOOL",), "BOOL"),
    "sampling_parameters": (("BYTES",), "BYTES"),
}


class Tokenizer(Protocol):
    def encode(self, text: str) -> list[int]: ...


class UnknownModel(RuntimeServiceError):
    """The request names a model this replica does not serve (maps to NOT_FOUND)."""

    def __init__(self, name: str, served: str) -> None:
        self.name = name
        self.served = served
        super().__init__(f"Request for unknown model: '{name}' is not found (serving '{served}')")


class NotReady(RuntimeServiceError):
    """The replica is loading or draining (maps to UNAVAILABLE)."""


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, row-major


@dataclass(slots=True)
class LlmCall:
    text: str
    sampling: SamplingParams
    stream: bool | None
    exclude_input: bool
    lora_name: str | None


# ---- decoding requests (pure) ----------------------------------------------------------------


def _decode_raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidRequest(f"input '{name}': truncated BYTES length prefix")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InvalidRequest(f"input '{name}': BYTES element overruns the tensor")
            values.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return values
    fmt = _RAW_FORMATS.get(datatype)
    if fmt is None:
        raise InvalidRequest(f"input '{name}': datatype {datatype} is not supported")
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise InvalidRequest(f"input '{name}': {len(raw)} raw bytes is not a whole {datatype}s")
    return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))


def read_inputs(req: pb.ModelInferRequest) -> dict[str, Tensor]:
    """The request's input tensors by name, from `contents` or `raw_input_contents`."""
    raws = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise InvalidRequest(
            f"raw_input_contents has {len(raws)} entries for {len(req.inputs)} inputs; "
            "give raw contents for every input or for none"
        )
    out: dict[str, Tensor] = {}
    for i, t in enumerate(req.inputs):
        if raws:
            values = _decode_raw(t.name, t.datatype, raws[i])
        elif t.datatype in _CONTENTS_FIELD:
            values = list(getattr(t.contents, _CONTENTS_FIELD[t.datatype]))
        else:
            raise InvalidRequest(f"input '{t.name}': datatype {t.datatype!r} is not supported")
        expected = math.prod(t.shape)
        if len(values) != expected:
            raise InvalidRequest(
                f"input '{t.name}': shape {list(t.shape)} needs {expected} elements, "
                f"got {len(values)}"
            )
        out[t.name] = Tensor(t.name, t.datatype, list(t.shape), values)
    return out


def _utf8(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidRequest(f"input '{name}' is not UTF-8 text: {e}") from e


def _scalar(t: Tensor, accepted: tuple[str, ...]) -> Any:
    if t.datatype not in accepted:
        want = accepted[0] if len(accepted) == 1 else " or ".join(accepted)
        raise InvalidRequest(f"input '{t.name}' must be {want}, got {t.datatype}")
    if len(t.values) != 1:
        raise InvalidRequest(
            f"input '{t.name}' must hold exactly one value (shape [1] or [1, 1]), "
            f"got shape {t.shape}"
        )
    v = t.values[0]
    return _utf8(t.name, v) if t.datatype == "BYTES" else v


def _param_value(p: pb.InferParameter) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _coerce(name: str, v: Any, kind: type) -> Any:
    """`v` (a parameter, tensor or JSON value; strings as the vLLM backend sends) as `kind`."""
    text = v.strip().lower() if isinstance(v, str) else None
    if kind is bool:
        if isinstance(v, bool) or (isinstance(v, int) and v in (0, 1)):
            return bool(v)
        if text in ("true", "false", "1", "0"):
            return text in ("true", "1")
    elif kind is int and not isinstance(v, bool):
        if isinstance(v, int) or (isinstance(v, float) and v.is_integer()):
            return int(v)
        if text is not None and text.lstrip("-").isdigit():
            return int(text)
    elif kind is float and not isinstance(v, bool):
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
    elif kind is str and isinstance(v, str):
        return v
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise InvalidRequest(f"{name} must be {words[kind]}, got {v!r}")


def _coerce_list(name: str, v: Any, kind: type) -> list[Any]:
    items = v if isinstance(v, list) else [v]
    return [_coerce(name, x, kind) for x in items]


_SAMPLING_FIELDS: dict[str, Callable[[str, Any], Any]] = {
    "max_tokens": lambda n, v: _coerce(n, v, int),
    "temperature": lambda n, v: _coerce(n, v, float),
    "top_p": lambda n, v: _coerce(n, v, float),
    "top_k": lambda n, v: _coerce(n, v, int),
    "seed": lambda n, v: _coerce(n, v, int),
    "stop": lambda n, v: _coerce_list(n, v, str),
    "stop_token_ids": lambda n, v: _coerce_list(n, v, int),
    "ignore_eos": lambda n, v: _coerce(n, v, bool),
}


def _sampling_parameters_json(t: Tensor) -> dict[str, Any]:
    text = _scalar(t, ("BYTES",))
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise InvalidRequest(f"input 'sampling_parameters' is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidRequest("input 'sampling_parameters' must be a JSON object")
    return doc


def parse_llm_request(req: pb.ModelInferRequest) -> LlmCall:
    """The prompt text and sampling settings of a Triton-convention LLM request."""
    tensors = read_inputs(req)
    unknown = sorted(set(tensors) - set(LLM_INPUTS))
    if unknown:
        raise InvalidRequest(
            f"unexpected input {unknown[0]!r}; this model accepts: {', '.join(LLM_INPUTS)}"
        )
    if "text_input" not in tensors:
        raise InvalidRequest("input 'text_input' (BYTES, shape [1]) is required")
    settings: dict[str, Any] = {k: _param_value(v) for k, v in req.parameters.items()}
    if "sampling_parameters" in tensors:
        settings.update(_sampling_parameters_json(tensors.pop("sampling_parameters")))
    if "random_seed" in tensors:
        tensors["seed"] = tensors.pop("random_seed")
    for name, t in tensors.items():
        settings[name] = _scalar(t, LLM_INPUTS[name][0])
    kwargs = {k: conv(k, settings[k]) for k, conv in _SAMPLING_FIELDS.items() if k in settings}
    if kwargs.get("top_k") == -1:  # vLLM's "off"
        kwargs["top_k"] = 0
    sampling = SamplingParams(**kwargs)
    sampling.validate()
    stream, lora, exclude = (
        settings.get("stream"),
        settings.get("lora_name"),
        "exclude_input_in_output",
    )
    return LlmCall(
        text=settings["text_input"],
        sampling=sampling,
        stream=None if stream is None else _coerce("stream", stream, bool),
        exclude_input=_coerce("exclude_input_in_output", settings.get(exclude, False), bool),
        lora_name=_coerce("lora_name", lora, str) if lora else None,
    )


def _reshape(flat: list[Any], shape: list[int]) -> Any:
    if len(shape) <= 1:
        return flat
    step = len(flat) // shape[0] if shape[0] else 0
    return [_reshape(flat[i * step : (i + 1) * step], shape[1:]) for i in range(shape[0])]


def python_payload(req: pb.ModelInferRequest) -> Any:
    """The JSON value a python model's predict() gets (see the module docstring)."""
    tensors = read_inputs(req)
    if list(tensors) == ["json"] and tensors["json"].datatype == "BYTES":
        text = _scalar(tensors["json"], ("BYTES",))
        try:
            return json.loads(text)
        except ValueError as e:
            raise InvalidRequest(f"input 'json' is not a JSON document: {e}") from e
    payload: dict[str, Any] = {}
    for name, t in tensors.items():
        values = [_utf8(name, v) for v in t.values] if t.datatype == "BYTES" else t.values
        payload[name] = values[0] if len(values) == 1 else _reshape(values, t.shape)
    return payload


# ---- building responses (pure) -------------------------------------------------------------


def _bytes_raw(values: list[bytes]) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def bytes_response(
    req: pb.ModelInferRequest, model: str, output: str, values: list[bytes], final: bool | None
) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model, model_version="1", id=req.id)
    resp.outputs.add(name=output, datatype="BYTES", shape=[len(values)])
    resp.raw_output_contents.append(_bytes_raw(values))
    if final is not None:
        resp.parameters[FINAL_FLAG].bool_param = final
    return resp


def status_for(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """The gRPC status and message a failed request ends with."""
    if isinstance(exc, InvalidRequest):
        return grpc.StatusCode.INVALID_ARGUMENT, str(exc)
    if isinstance(exc, UnknownModel):
        return grpc.StatusCode.NOT_FOUND, str(exc)
    if isinstance(exc, (NotReady, Draining)):
        return grpc.StatusCode.UNAVAILABLE, str(exc)
    if isinstance(exc, RuntimeServiceError):
        return grpc.StatusCode.INTERNAL, str(exc)
    return grpc.StatusCode.INTERNAL, f"internal error: {type(exc).__name__}: {exc}"


def _log_failure(request_id: str, code: grpc.StatusCode, message: str) -> None:
    level = log.warning if code is grpc.StatusCode.INTERNAL else log.info
    level("kserve_request_failed", id=request_id, code=code.name, error=message)


@asynccontextmanager
async def _closing(items: AsyncIterator[Any]) -> AsyncIterator[AsyncIterator[Any]]:
    """Close an engine's stream when we stop reading it (client gone: the engine aborts)."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


# ---- the servicer (I/O) --------------------------------------------------------------------


class KServeServicer(kserve_pb2_grpc.GRPCInferenceServiceServicer):
    """Triton's GRPCInferenceService for the one model this replica serves."""

    def __init__(
        self, engine: Engine, model_name: str, tokenizer: Tokenizer, is_ready: Callable[[], bool]
    ) -> None:
        self.engine = engine
        self.model_name = model_name
        self.tokenizer = tokenizer
        self.is_ready = is_ready
        self.is_python = engine.kind == "python"
        self.output_name = "output" if self.is_python else "text_output"

    async def ServerLive(self, request: Any, context: Any) -> pb.ServerLiveResponse:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> pb.ServerReadyResponse:
        return pb.ServerReadyResponse(ready=self.is_ready())

    async def ModelReady(
        self, request: pb.ModelReadyRequest, context: Any
    ) -> pb.ModelReadyResponse:
        return pb.ModelReadyResponse(ready=request.name == self.model_name and self.is_ready())

    async def ServerMetadata(self, request: Any, context: Any) -> pb.ServerMetadataResponse:
        return pb.ServerMetadataResponse(
            name=SERVER_NAME, version=SERVER_VERSION, extensions=["parameters"]
        )

    async def ModelMetadata(
        self, request: pb.ModelMetadataRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelMetadataResponse:
        if request.name != self.model_name:
            await context.abort(*status_for(UnknownModel(request.name, self.model_name)))
        resp = pb.ModelMetadataResponse(
            name=self.model_name, versions=["1"], platform=self.engine.kind
        )
        if self.is_python:
            resp.inputs.add(name="json", datatype="BYTES", shape=[1])
        else:
            for name, (_, datatype) in LLM_INPUTS.items():
                resp.inputs.add(name=name, datatype=datatype, shape=[1])
        resp.outputs.add(name=self.output_name, datatype="BYTES", shape=[-1])
        return resp

    async def ModelInfer(
        self, request: pb.ModelInferRequest, context: grpc.aio.ServicerContext
    ) -> pb.ModelInferResponse:
        try:
            values: list[bytes] = []
            async for chunk, _ in self._responses(request, streaming=False):
                values.extend(chunk)
            return bytes_response(request, self.model_name, self.output_name, values, None)
        except Exception as e:  # noqa: BLE001  (every failure becomes a gRPC status)
            failure = e
        code, message = status_for(failure)
        _log_failure(request.id, code, message)
        await context.abort(code, message)
        raise AssertionError("unreachable: context.abort raises")

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[pb.ModelInferRequest], context: Any
    ) -> AsyncIterator[pb.ModelStreamInferResponse]:
        """Requests on one stream run concurrently; their responses interleave, keyed by id."""
        queue: asyncio.Queue[pb.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def read() -> None:
            try:
                async for req in request_iterator:
                    task = asyncio.create_task(self._stream_one(req, queue.put_nowait))
                    tasks.add(task)
                    task.add_done_callback(tasks.discard)
                while tasks:
                    await asyncio.wait(set(tasks))
            finally:
                queue.put_nowait(None)

        reader = asyncio.create_task(read())
        try:
            while (resp := await queue.get()) is not None:
                yield resp
        finally:
            for task in (reader, *tasks):
                task.cancel()

    async def _stream_one(
        self, req: pb.ModelInferRequest, emit: Callable[[pb.ModelStreamInferResponse], None]
    ) -> None:
        try:
            async for values, last in self._responses(req, streaming=True):
                resp = bytes_response(req, self.model_name, self.output_name, values, last)
                emit(pb.ModelStreamInferResponse(infer_response=resp))
        except Exception as e:  # noqa: BLE001  (reported on the stream, which goes on)
            code, message = status_for(e)
            _log_failure(req.id, code, message)
            emit(
                pb.ModelStreamInferResponse(
                    error_message=message,
                    infer_response=pb.ModelInferResponse(model_name=self.model_name, id=req.id),
                )
            )

    def _admit(self, req: pb.ModelInferRequest) -> None:
        if req.model_name != self.model_name:
            raise UnknownModel(req.model_name, self.model_name)
        if not self.is_ready():
            raise NotReady(f"model '{self.model_name}' is not ready (loading or draining)")
        for o in req.outputs:
            if o.name != self.output_name:
                raise InvalidRequest(
                    f"unexpected inference output '{o.name}'; this model has '{self.output_name}'"
                )

    def _responses(
        self, req: pb.ModelInferRequest, streaming: bool
    ) -> AsyncIterator[tuple[list[bytes], bool]]:
        """(output elements, is-last) per response to send."""
        self._admit(req)
        if self.is_python:
            return self._python_responses(python_payload(req), streaming)
        return self._llm_responses(parse_llm_request(req), streaming)

    async def _python_responses(
        self, payload: Any, streaming: bool
    ) -> AsyncIterator[tuple[list[bytes], bool]]:
        """Streaming: each item as soon as the model yields it, then an empty final response."""
        docs: list[bytes] = []
        async with _closing(self.engine.predict(payload)) as items:
            async for item in items:
                doc = json.dumps(item).encode()
                if streaming:
                    yield [doc], False
                else:
                    docs.append(doc)
        yield docs, True

    async def _llm_responses(
        self, call: LlmCall, streaming: bool
    ) -> AsyncIterator[tuple[list[bytes], bool]]:
        if not streaming and call.stream:
            raise InvalidRequest(
                "stream=true needs ModelStreamInfer (tritonclient: start_stream + "
                "async_stream_infer); ModelInfer returns the whole text"
            )
        inp = GenerateInput(
            request_id=f"kserve-{uuid.uuid4().hex}",
            prompt_token_ids=self.tokenizer.encode(call.text),
            sampling=call.sampling,
            lora_name=call.lora_name,
        )
        prefix = "" if call.exclude_input else call.text
        whole = not streaming or call.stream is False
        texts: list[str] = []
        async with _closing(self.engine.generate(inp)) as chunks:
            async for chunk in chunks:
                last = chunk.finish_reason is not None
                if whole:
                    texts.append(chunk.text)
                elif chunk.text or last:
                    yield [(prefix + chunk.text).encode()], last
                    prefix = ""
                if last:
                    break
            else:
                last = False
        if whole or not last:  # the whole text, or a stream the engine ended without a finish
            yield [(prefix + "".join(texts)).encode()], True
