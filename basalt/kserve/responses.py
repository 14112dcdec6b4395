"""Building KServe v2 responses: outputs shaped into responses, and the messages (no I/O).

LLM text deltas and python-model JSON documents become responses; then the response, stream,
error and metadata messages. The conventions are described in basalt.kserve.codec, which
re-exports this module.

Never import this module (it loads basalt.pb.kserve_pb2) into a process that imports
tritonclient: both register the same `inference.*` protobuf symbols.
"""

from __future__ import annotations

import importlib.metadata
import struct

from basalt.kserve.requests import LLM_INPUTS, PYTHON_INPUT, PYTHON_PLATFORM, LlmCall, output_name
from basalt.pb import kserve_pb2 as pb

SERVER_NAME = "basalt"
try:
    SERVER_VERSION = importlib.metadata.version("basalt")
except importlib.metadata.PackageNotFoundError:  # run from a checkout that is not installed
    SERVER_VERSION = "0+unknown"
FINAL_FLAG = "triton_final_response"

# (output elements, is-last): the body of one response to send
Response = tuple[list[bytes], bool]


# ---- shaping outputs into responses ----------------------------------------------------------


class TextResponses:
    """Turns an LLM's text deltas into the responses Triton's LLM backends send."""

    def __init__(self, call: LlmCall, streaming: bool) -> None:
        self._prefix = "" if call.exclude_input else call.text
        self._whole = not streaming or call.stream is False
        self._texts: list[str] = []
        self.done = False

    def add(self, text: str, last: bool) -> list[Response]:
        """Responses to send for one delta (`last`: the engine gave a finish reason)."""
        if self.done:
            return []
        if self._whole:
            self._texts.append(text)
            return self.finish() if last else []
        if not (text or last):
            return []
        out = [([(self._prefix + text).encode()], last)]
        self._prefix, self.done = "", last
        return out

    def finish(self) -> list[Response]:
        """The closing response, unless sent: the whole text, or a final flag for a stream the
        engine ended without a finish reason."""
        if self.done:
            return []
        self.done = True
        return [([(self._prefix + "".join(self._texts)).encode()], True)]


class JsonResponses:
    """Turns a python model's JSON documents into responses (see the module docstring)."""

    def __init__(self, streaming: bool) -> None:
        self._streaming = streaming
        self._docs: list[bytes] = []

    def add(self, doc: bytes) -> list[Response]:
        if self._streaming:
            return [([doc], False)]
        self._docs.append(doc)
        return []

    def finish(self) -> list[Response]:
        return [(self._docs, True)]


# ---- building messages -----------------------------------------------------------------------


def bytes_raw(values: list[bytes]) -> bytes:
    """BYTES tensor contents as raw_output_contents carries them: 4-byte length, then data."""
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def bytes_response(
    req: pb.ModelInferRequest, model: str, output: str, values: list[bytes], final: bool | None
) -> pb.ModelInferResponse:
    resp = pb.ModelInferResponse(model_name=model, model_version="1", id=req.id)
    resp.outputs.add(name=output, datatype="BYTES", shape=[len(values)])
    resp.raw_output_contents.append(bytes_raw(values))
    if final is not None:
        resp.parameters[FINAL_FLAG].bool_param = final
    return resp


def stream_response(
    req: pb.ModelInferRequest, model: str, output: str, response: Response
) -> pb.ModelStreamInferResponse:
    values, last = response
    return pb.ModelStreamInferResponse(
        infer_response=bytes_response(req, model, output, values, last)
    )


def stream_error(
    req: pb.ModelInferRequest, model: str, message: str
) -> pb.ModelStreamInferResponse:
    """A failed request on a stream: the stream itself goes on."""
    return pb.ModelStreamInferResponse(
        error_message=message, infer_response=pb.ModelInferResponse(model_name=model, id=req.id)
    )


def server_metadata() -> pb.ServerMetadataResponse:
    return pb.ServerMetadataResponse(
        name=SERVER_NAME, version=SERVER_VERSION, extensions=["parameters"]
    )


def model_metadata(name: str, platform: str) -> pb.ModelMetadataResponse:
    """The inputs and output a model of this platform (an engine kind) takes and gives."""
    resp = pb.ModelMetadataResponse(name=name, versions=["1"], platform=platform)
    if platform == PYTHON_PLATFORM:
        resp.inputs.add(name=PYTHON_INPUT, datatype="BYTES", shape=[1])
    else:
        for input_name, (_, datatype) in LLM_INPUTS.items():
            resp.inputs.add(name=input_name, datatype=datatype, shape=[1])
    resp.outputs.add(name=output_name(platform), datatype="BYTES", shape=[-1])
    return resp
