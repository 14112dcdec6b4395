"""Hypothesis over the KServe v2 codec (basalt/kserve/): ModelInferRequests with arbitrary
shapes, datatypes, `contents`, `raw_input_contents` bytes, request parameters and
`sampling_parameters` JSON give either a clean result or InvalidInput (the one error both
servicers answer INVALID_ARGUMENT; anything else is INTERNAL), and never allocate more than
the request itself holds (shapes are capped at 8 dimensions and 2^24 elements before any
data is read). Pure: no server runs.
"""

from __future__ import annotations

import json
import struct
import tracemalloc
from typing import Any

import pytest
from hypothesis import event, given, settings
from hypothesis import strategies as st

from basalt.kserve import codec
from basalt.kserve.requests import _RAW_FORMATS, MAX_DIMS, MAX_ELEMENTS
from basalt.pb import kserve_pb2 as pb
from tests.property.support import FUZZ, messages

DATATYPES = [*_RAW_FORMATS, "BYTES", "BF16", "fp32", "", "INT128"]
NAMES = [*codec.LLM_INPUTS, codec.PYTHON_INPUT, "", "extra"]
SETTING_NAMES = ["max_tokens", "temperature", "top_p", "top_k", "seed", "stop",
                 "stop_token_ids", "ignore_eos", "lora_name", "stream",
                 "exclude_input_in_output", "text_input", "unknown"]
# Pure and a millisecond an example: more examples than the suites that call servers.
CODEC = settings(FUZZ, max_examples=80)
# Bytes a request may carry, in all: what it claims beyond this must be refused, not built.
ALLOCATION_SLACK = 4 * 2**20

_INT = st.one_of(st.integers(-3, 300), st.integers(-(2**63), 2**63 - 1),
                 st.sampled_from([2**31, 2**32, 2**63 - 1, -(2**63)]))
_FLOAT = st.floats(allow_nan=True, allow_infinity=True)
# Strings that look like numbers or booleans to some parser and not to others.
_TRICKY = st.sampled_from(["--1", "²", "٣", " 12 ", "1e3", "1_000", "-", "", "true", "False",
                           "0x10", "nan", "inf", "-1", "4294967296"])
_TEXT = st.one_of(st.text(max_size=12), _TRICKY)


def _json() -> st.SearchStrategy[Any]:
    scalars = st.none() | st.booleans() | _INT | _FLOAT | _TEXT
    return st.recursive(scalars, lambda inner: st.lists(inner, max_size=3)
                        | st.dictionaries(_TEXT, inner, max_size=3), max_leaves=10)


def _setting_docs() -> st.SearchStrategy[bytes]:
    """`sampling_parameters` text: an object of settings, other JSON, or not JSON at all."""
    settings = st.dictionaries(st.sampled_from(SETTING_NAMES), _json(), max_size=5)
    return st.one_of(settings.map(lambda d: json.dumps(d).encode()),
                     _json().map(lambda d: json.dumps(d).encode()), st.binary(max_size=40))


_parameter = st.one_of(
    st.builds(lambda v: pb.InferParameter(bool_param=v), st.booleans()),
    st.builds(lambda v: pb.InferParameter(int64_param=v), st.integers(-(2**63), 2**63 - 1)),
    st.builds(lambda v: pb.InferParameter(string_param=v), _TEXT),
    st.builds(lambda v: pb.InferParameter(double_param=v), _FLOAT),
    st.builds(lambda v: pb.InferParameter(uint64_param=v), st.integers(0, 2**64 - 1)),
    st.just(pb.InferParameter()),
)
_shape = st.lists(st.one_of(st.integers(-2, 4), st.sampled_from([2**24, 2**31, 2**62])),
                  max_size=MAX_DIMS + 2)


def _values(datatype: str, n: int) -> st.SearchStrategy[list[Any]]:
    """`n` values a datatype's tensor may hold (ints of any width: the raw packer clips)."""
    if datatype == "BOOL":
        one: st.SearchStrategy[Any] = st.booleans()
    elif datatype in ("FP16", "FP32", "FP64"):
        one = _FLOAT
    elif datatype == "BYTES":
        one = st.one_of(st.binary(max_size=12), _TEXT.map(str.encode), _setting_docs())
    else:
        one = st.integers(0, 255) if datatype.startswith("U") else st.integers(-128, 127)
    return st.lists(one, min_size=n, max_size=n)


def _pack(datatype: str, values: list[Any]) -> bytes:
    if datatype == "BYTES":
        return b"".join(struct.pack("<I", len(v)) + v for v in values)
    fmt = _RAW_FORMATS[datatype]
    try:
        return struct.pack(f"<{len(values)}{fmt}", *values)
    except (struct.error, OverflowError):
        return b""


@st.composite
def infer_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """A request with 0-4 inputs, each well-formed or not in any of its parts."""
    req = pb.ModelInferRequest(model_name=draw(st.text(max_size=8)), id=draw(st.text(max_size=8)))
    raw = draw(st.booleans())
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(NAMES) | st.text(max_size=8))
        datatype = draw(st.sampled_from(DATATYPES))
        shape = draw(st.one_of(st.just([1]), st.just([1, 1]), _shape))
        t = req.inputs.add(name=name, datatype=datatype, shape=shape)
        count = 1
        for dim in shape[:MAX_DIMS]:
            count = count * dim if 0 < dim <= 64 else count
        count = min(count, 64) if draw(st.booleans()) else draw(st.integers(0, 6))
        packable = datatype in _RAW_FORMATS or datatype == "BYTES"
        values = draw(_values(datatype if packable else "BYTES", count))
        if raw:
            req.raw_input_contents.append(
                _pack(datatype, values) if packable and draw(st.booleans())
                else draw(st.binary(max_size=64)))
        elif draw(st.booleans()) and datatype in ("BOOL", "INT32", "FP32", "FP64", "BYTES"):
            field = {"BOOL": "bool_contents", "INT32": "int_contents", "FP32": "fp32_contents",
                     "FP64": "fp64_contents", "BYTES": "bytes_contents"}[datatype]
            getattr(t.contents, field).extend(values)
        else:
            t.contents.CopyFrom(draw(messages(pb.InferTensorContents)))
    if raw and draw(st.booleans()):
        req.raw_input_contents.append(draw(st.binary(max_size=8)))  # one too many
    for key in draw(st.lists(st.sampled_from(SETTING_NAMES) | st.text(max_size=6), max_size=4)):
        req.parameters[key].CopyFrom(draw(_parameter))
    for out in draw(st.lists(st.sampled_from([codec.LLM_OUTPUT, codec.PYTHON_OUTPUT, "x"]),
                             max_size=2)):
        req.outputs.add(name=out)
    return req


@st.composite
def llm_requests(draw: st.DrawFn) -> pb.ModelInferRequest:
    """Closer to what tritonclient sends: a `text_input`, then LLM inputs of accepted
    datatypes holding any value, settings in parameters and in `sampling_parameters`."""
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="text_input", datatype="BYTES", shape=draw(st.sampled_from([[1], [1, 1]]))
                   ).contents.bytes_contents.append(draw(st.text(max_size=20)).encode())
    for name in draw(st.lists(st.sampled_from(list(codec.LLM_INPUTS)[1:]), max_size=4,
                              unique=True)):
        accepted = codec.LLM_INPUTS[name][0]
        datatype = draw(st.sampled_from(accepted))
        t = req.inputs.add(name=name, datatype=datatype, shape=[1])
        if name == "sampling_parameters":
            t.contents.bytes_contents.append(draw(_setting_docs()))
        else:
            values = draw(_values(datatype, 1))
            if datatype in ("INT64", "UINT64", "INT32", "UINT32"):
                bits = 64 if "64" in datatype else 32
                lo = 0 if datatype.startswith("U") else -(2 ** (bits - 1))
                values = [draw(st.integers(lo, lo + 2**bits - 1))]
            req.raw_input_contents.append(_pack(datatype, values))
    if len(req.raw_input_contents) != len(req.inputs):  # raw for every input or for none
        del req.raw_input_contents[:]
        for t in req.inputs[1:]:
            if not t.contents.bytes_contents:
                req.inputs.remove(t)
    for key in draw(st.lists(st.sampled_from(SETTING_NAMES), max_size=4)):
        req.parameters[key].CopyFrom(draw(_parameter))
    return req


def _run(fn: Any, req: pb.ModelInferRequest) -> Any:
    """`fn(req)`: its result, or None after InvalidInput; never another exception, and never
    more memory than the request holds (plus slack)."""
    size = req.ByteSize()
    tracemalloc.start()
    try:
        result = fn(req)
    except codec.InvalidInput as e:
        assert e.message, "InvalidInput without a message"
        event("InvalidInput")
        return None
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < 64 * size + ALLOCATION_SLACK, f"{peak} bytes for a {size}-byte request"
    event("ok")
    return result


@CODEC
@given(req=infer_requests())
def test_read_inputs_refuses_or_reads_what_is_there(req: pb.ModelInferRequest) -> None:
    tensors = _run(codec.read_inputs, req)
    if tensors is None:
        return
    for t in tensors.values():
        assert 0 < len(t.shape) <= MAX_DIMS or t.shape == []
        assert len(t.values) <= MAX_ELEMENTS


@CODEC
@given(req=st.one_of(infer_requests(), llm_requests()))
def test_an_llm_request_parses_cleanly_or_is_invalid_input(req: pb.ModelInferRequest) -> None:
    call = _run(codec.parse_llm_request, req)
    if call is None:
        return
    assert isinstance(call.text, str)
    call.sampling.SerializeToString()  # every value fits its wire type
    try:
        codec.refuse_stream_on_infer(call)
    except codec.InvalidInput:
        pass
    shaper = codec.TextResponses(call, streaming=True)
    for values, last in [*shaper.add("a", False), *shaper.add("b", True), *shaper.finish()]:
        codec.stream_response(req, "m", codec.LLM_OUTPUT, (values, last)).SerializeToString()


@CODEC
@given(req=infer_requests())
def test_a_python_request_gives_json_or_invalid_input(req: pb.ModelInferRequest) -> None:
    payload = _run(codec.python_payload, req)
    if payload is not None:
        json.dumps(payload)  # what the python engine hands the model is JSON


@CODEC
@given(req=infer_requests(), output=st.sampled_from([codec.LLM_OUTPUT, codec.PYTHON_OUTPUT]))
def test_requested_outputs_are_checked_cleanly(req: pb.ModelInferRequest, output: str) -> None:
    _run(lambda r: codec.check_outputs(r, output), req)
    codec.bytes_response(req, "m", output, [b"x", b""], None).SerializeToString()
    codec.stream_error(req, "m", "no").SerializeToString()


@CODEC
@given(shape=st.lists(st.integers(-(2**63), 2**63 - 1), max_size=12))
def test_any_declared_shape_is_checked_before_anything_is_built(shape: list[int]) -> None:
    req = pb.ModelInferRequest()
    req.inputs.add(name="text_input", datatype="BYTES", shape=shape)
    req.raw_input_contents.append(b"")
    _run(codec.read_inputs, req)


def _llm(text: bytes = b"hi", **params: pb.InferParameter) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="m")
    t = req.inputs.add(name="text_input", datatype="BYTES", shape=[1])
    t.contents.bytes_contents.append(text)
    for k, v in params.items():
        req.parameters[k].CopyFrom(v)
    return req


@pytest.mark.parametrize("value", ["--1", "²"])
def test_a_string_that_is_no_integer_is_invalid_input(value: str) -> None:
    with pytest.raises(codec.InvalidInput):
        codec.parse_llm_request(_llm(max_tokens=pb.InferParameter(string_param=value)))


DEEP = b"[" * 1000  # 1 KB: json.loads raises RecursionError, not ValueError


def test_deeply_nested_sampling_parameters_are_invalid_input() -> None:
    req = _llm()
    req.inputs.add(name="sampling_parameters", datatype="BYTES",
                   shape=[1]).contents.bytes_contents.append(DEEP)
    with pytest.raises(codec.InvalidInput):
        codec.parse_llm_request(req)


def test_a_deeply_nested_json_input_is_invalid_input() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="json", datatype="BYTES", shape=[1]).contents.bytes_contents.append(DEEP)
    with pytest.raises(codec.InvalidInput):
        codec.python_payload(req)
