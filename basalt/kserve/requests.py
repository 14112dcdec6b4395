"""Reading KServe v2 requests: tensors, an LLM call, a python model's JSON payload (no I/O).

Also what a request may ask for (its outputs, stream on ModelInfer). The conventions are
described in basalt.kserve.codec, which re-exports this module.

Never import this module (it loads basalt.pb.kserve_pb2) into a process that imports
tritonclient: both register the same `inference.*` protobuf symbols.
"""

from __future__ import annotations

import json
import re
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from basalt.pb import kserve_pb2 as pb
from basalt.pb import runtime_pb2

PYTHON_PLATFORM = "python"
LLM_OUTPUT = "text_output"
PYTHON_INPUT = "json"
PYTHON_OUTPUT = "output"

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


class InvalidInput(ValueError):
    """The request's tensors or parameters cannot be read as asked (maps to INVALID_ARGUMENT)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(slots=True)
class Tensor:
    name: str
    datatype: str
    shape: list[int]
    values: list[Any]  # flat, row-major


@dataclass(slots=True)
class LlmCall:
    text: str
    sampling: runtime_pb2.SamplingParams  # unset fields: the engine's defaults
    stream: bool | None
    exclude_input: bool
    lora_name: str | None



def _decode_raw(name: str, datatype: str, raw: bytes) -> list[Any]:
    if datatype == "BYTES":
        values, pos = [], 0
        while pos < len(raw):
            if pos + 4 > len(raw):
                raise InvalidInput(f"input '{name}': truncated BYTES length prefix")
            (n,) = struct.unpack_from("<I", raw, pos)
            if pos + 4 + n > len(raw):
                raise InvalidInput(f"input '{name}': BYTES element overruns the tensor")
            values.append(raw[pos + 4 : pos + 4 + n])
            pos += 4 + n
        return values
    fmt = _RAW_FORMATS.get(datatype)
    if fmt is None:
        raise InvalidInput(f"input '{name}': datatype {datatype} is not supported")
    size = struct.calcsize(fmt)
    if len(raw) % size:
        raise InvalidInput(f"input '{name}': {len(raw)} raw bytes is not a whole {datatype}s")
    return list(struct.unpack(f"<{len(raw) // size}{fmt}", raw))


# Bounds on what a request's shapes may claim, checked before anything is built from them (a
# 30-byte request must not make the server allocate or loop over a huge declared shape).
MAX_DIMS = 8
MAX_ELEMENTS = 2**24


def check_shape(name: str, shape: list[int]) -> int:
    """The element count of a valid shape; InvalidInput naming the input otherwise. Every
    dimension is at least 1 (empty tensors are not accepted)."""
    if len(shape) > MAX_DIMS:
        raise InvalidInput(f"input '{name}': shape has {len(shape)} dimensions, at most {MAX_DIMS}")
    count = 1
    for dim in shape:
        if dim < 1:
            raise InvalidInput(f"input '{name}': shape {shape} has a dimension below 1")
        count *= dim
        if count > MAX_ELEMENTS:
            raise InvalidInput(f"input '{name}': shape {shape} holds more than {MAX_ELEMENTS} "
                               "elements")
    return count


def read_inputs(req: pb.ModelInferRequest) -> dict[str, Tensor]:
    """The request's input tensors by name, from `contents` or `raw_input_contents`; every
    shape is checked (`check_shape`) before the data is decoded."""
    raws = list(req.raw_input_contents)
    if raws and len(raws) != len(req.inputs):
        raise InvalidInput(
            f"raw_input_contents has {len(raws)} entries for {len(req.inputs)} inputs; "
            "give raw contents for every input or for none"
        )
    out: dict[str, Tensor] = {}
    for i, t in enumerate(req.inputs):
        expected = check_shape(t.name, list(t.shape))
        if raws:
            values = _decode_raw(t.name, t.datatype, raws[i])
        elif t.datatype in _CONTENTS_FIELD:
            values = list(getattr(t.contents, _CONTENTS_FIELD[t.datatype]))
        else:
            raise InvalidInput(f"input '{t.name}': datatype {t.datatype!r} is not supported")
        if len(values) != expected:
            raise InvalidInput(
                f"input '{t.name}': shape {list(t.shape)} needs {expected} elements, "
                f"got {len(values)}"
            )
        out[t.name] = Tensor(t.name, t.datatype, list(t.shape), values)
    return out


def _utf8(name: str, value: bytes) -> str:
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InvalidInput(f"input '{name}' is not UTF-8 text: {e}") from e


def _scalar(t: Tensor, accepted: tuple[str, ...]) -> Any:
    if t.datatype not in accepted:
        want = accepted[0] if len(accepted) == 1 else " or ".join(accepted)
        raise InvalidInput(f"input '{t.name}' must be {want}, got {t.datatype}")
    if len(t.values) != 1:
        raise InvalidInput(
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
        if text is not None and re.fullmatch(r"-?[0-9]{1,19}", text):
            return int(text)
    elif kind is float and not isinstance(v, bool):
        try:
            return float(v)
        except (TypeError, ValueError):
            pass
    elif kind is str and isinstance(v, str):
        return v
    words = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    raise InvalidInput(f"{name} must be {words[kind]}, got {v!r}")


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


def sampling_from_settings(settings: dict[str, Any]) -> runtime_pb2.SamplingParams:
    """The runtime's SamplingParams from named settings. Value ranges (temperature, top_p, ...)
    are the engine's to check; here only what the wire cannot carry is refused."""
    values = {k: conv(k, settings[k]) for k, conv in _SAMPLING_FIELDS.items() if k in settings}
    if values.get("max_tokens", 1) < 1:  # 0 on the wire means "the default"
        raise InvalidInput(f"max_tokens must be at least 1, got {values['max_tokens']}")
    if values.get("top_k") == -1:  # vLLM's "off"
        del values["top_k"]
    msg = runtime_pb2.SamplingParams()
    for name, value in values.items():
        try:
            if isinstance(value, list):
                getattr(msg, name).extend(value)
            else:
                setattr(msg, name, value)
        except (TypeError, ValueError):
            raise InvalidInput(f"{name} is out of range: {value!r}") from None
    return msg


def _sampling_parameters_json(t: Tensor) -> dict[str, Any]:
    text = _scalar(t, ("BYTES",))
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
        raise InvalidInput(f"input 'sampling_parameters' is not JSON: {e}") from e
    if not isinstance(doc, dict):
        raise InvalidInput("input 'sampling_parameters' must be a JSON object")
    return doc


def parse_llm_request(req: pb.ModelInferRequest) -> LlmCall:
    """The prompt text and sampling settings of a Triton-convention LLM request."""
    tensors = read_inputs(req)
    unknown = sorted(set(tensors) - set(LLM_INPUTS))
    if unknown:
        raise InvalidInput(
            f"unexpected input {unknown[0]!r}; this model accepts: {', '.join(LLM_INPUTS)}"
        )
    if "text_input" not in tensors:
        raise InvalidInput("input 'text_input' (BYTES, shape [1]) is required")
    settings: dict[str, Any] = {k: _param_value(v) for k, v in req.parameters.items()}
    if "sampling_parameters" in tensors:
        settings.update(_sampling_parameters_json(tensors.pop("sampling_parameters")))
    if "random_seed" in tensors:
        tensors["seed"] = tensors.pop("random_seed")
    for name, t in tensors.items():
        settings[name] = _scalar(t, LLM_INPUTS[name][0])
    stream, lora = settings.get("stream"), settings.get("lora_name")
    exclude = settings.get("exclude_input_in_output", False)
    return LlmCall(
        text=settings["text_input"],
        sampling=sampling_from_settings(settings),
        stream=None if stream is None else _coerce("stream", stream, bool),
        exclude_input=_coerce("exclude_input_in_output", exclude, bool),
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
    if list(tensors) == [PYTHON_INPUT] and tensors[PYTHON_INPUT].datatype == "BYTES":
        text = _scalar(tensors[PYTHON_INPUT], ("BYTES",))
        try:
            return json.loads(text)
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise InvalidInput(f"input 'json' is not a JSON document: {e}") from e
    payload: dict[str, Any] = {}
    for name, t in tensors.items():
        values = [_utf8(name, v) for v in t.values] if t.datatype == "BYTES" else t.values
        payload[name] = values[0] if len(values) == 1 else _reshape(values, t.shape)
    return payload


def output_name(platform: str) -> str:
    return PYTHON_OUTPUT if platform == PYTHON_PLATFORM else LLM_OUTPUT


def check_outputs(req: pb.ModelInferRequest, output: str) -> None:
    """Refuse a request that asks for an output the model does not have."""
    for o in req.outputs:
        if o.name != output:
            raise InvalidInput(f"unexpected inference output '{o.name}'; this model has '{output}'")


def refuse_stream_on_infer(call: LlmCall) -> None:
    if call.stream:
        raise InvalidInput(
            "stream=true needs ModelStreamInfer (tritonclient: start_stream + "
            "async_stream_infer); ModelInfer returns the whole text"
        )
