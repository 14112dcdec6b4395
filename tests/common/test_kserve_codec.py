"""KServe v2 request decoding and response shaping, shared by runtime and router (no server)."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest

from basalt.kserve import codec
from basalt.pb import kserve_pb2 as pb


def _request(
    inputs: list[tuple[str, str, list[int], bytes]], **params: Any
) -> pb.ModelInferRequest:
    """A ModelInferRequest with raw_input_contents, as tritonclient sends it."""
    req = pb.ModelInferRequest(model_name="m", id="r1")
    for name, datatype, shape, raw in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(raw)
    for key, value in params.items():
        field = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
        setattr(req.parameters[key], field, value)
    return req


def _raw_bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def _text(prompt: str = "x") -> tuple[str, str, list[int], bytes]:
    return ("text_input", "BYTES", [1], _raw_bytes(prompt.encode()))


# ---- decoding --------------------------------------------------------------------------------


def test_llm_request_decoding_reads_raw_contents_and_ranks_its_sources() -> None:
    sampling_json = json.dumps({"max_tokens": "9", "top_k": -1, "stop": ["\n"]}).encode()
    req = _request(
        [
            ("text_input", "BYTES", [1, 1], _raw_bytes("héllo".encode())),
            ("temperature", "FP32", [1], struct.pack("<f", 0.25)),
            ("sampling_parameters", "BYTES", [1], _raw_bytes(sampling_json)),
            ("max_tokens", "INT32", [1], struct.pack("<i", 3)),
        ],
        max_tokens=50, top_p="0.5", seed=7, lora_name="sql",
    )  # fmt: skip
    call = codec.parse_llm_request(req)
    assert call.text == "héllo"
    s = call.sampling
    # tensor beats sampling_parameters beats request parameters; top_k -1 is "off" (unset)
    assert (s.max_tokens, s.temperature, s.top_p, s.seed) == (3, 0.25, 0.5, 7)
    assert not s.HasField("top_k")
    assert list(s.stop) == ["\n"] and call.lora_name == "sql"
    assert call.stream is None and call.exclude_input is False


def test_unset_sampling_fields_stay_unset_for_the_engine_defaults() -> None:
    s = codec.parse_llm_request(_request([_text()])).sampling
    assert s.max_tokens == 0
    assert not any(s.HasField(f) for f in ("temperature", "top_p", "top_k", "seed"))


def test_llm_request_decoding_reads_typed_contents_too() -> None:
    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"hi"
    )
    req.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(True)
    call = codec.parse_llm_request(req)
    assert (call.text, call.stream) == ("hi", True)


@pytest.mark.parametrize(
    ("inputs", "params", "needle"),
    [
        ([("text_input", "BYTES", [2], _raw_bytes(b"a", b"b"))], {}, "exactly one value"),
        ([("text_input", "BYTES", [1], b"\x09\x00\x00\x00ab")], {}, "overruns"),
        ([("text_input", "BYTES", [1], _raw_bytes(b"\xff\xfe"))], {}, "not UTF-8"),
        ([_text(), ("bogus", "INT32", [1], b"\0" * 4)], {}, "unexpected input 'bogus'"),
        ([("max_tokens", "INT32", [1], b"\0" * 4)], {}, "'text_input'"),
        ([("text_input", "INT32", [1], b"\0" * 4)], {}, "must be BYTES, got INT32"),
        ([_text(), ("max_tokens", "INT32", [1], struct.pack("<i", 0))], {}, "at least 1"),
        ([_text()], {"seed": "-3"}, "seed is out of range"),
        ([_text()], {"temperature": "warm"}, "temperature must be a number"),
        ([_text()], {"stream": "maybe"}, "stream must be true or false"),
    ],
)  # fmt: skip
def test_malformed_llm_requests_are_refused_with_the_reason(
    inputs: list, params: dict, needle: str
) -> None:
    with pytest.raises(codec.InvalidInput, match=needle):
        codec.parse_llm_request(_request(inputs, **params))


def test_python_payload_passes_a_json_document_through_or_builds_a_dict() -> None:
    doc = _request([("json", "BYTES", [1], _raw_bytes(b'[1, {"a": null}]'))])
    assert codec.python_payload(doc) == [1, {"a": None}]
    tensors = _request(
        [("xs", "FP64", [3], struct.pack("<3d", 1.0, 2.5, 3.0)), ("flag", "BOOL", [1], b"\x01")]
    )
    assert codec.python_payload(tensors) == {"xs": [1.0, 2.5, 3.0], "flag": True}
    grid = _request([("ids", "INT32", [2, 2], struct.pack("<4i", 1, 2, 3, 4))])
    assert codec.python_payload(grid) == {"ids": [[1, 2], [3, 4]]}


def test_asking_for_an_output_the_model_lacks_is_refused() -> None:
    req = _request([_text()])
    req.outputs.add(name="logits")
    with pytest.raises(codec.InvalidInput, match="'logits'; this model has 'text_output'"):
        codec.check_outputs(req, codec.LLM_OUTPUT)


# ---- shaping responses -----------------------------------------------------------------------


def _call(prompt: str = "Hi", stream: bool | None = None, exclude: bool = False) -> codec.LlmCall:
    return codec.LlmCall(prompt, codec.sampling_from_settings({}), stream, exclude, None)


def _feed(shaper: codec.TextResponses, deltas: list[tuple[str, bool]]) -> list[codec.Response]:
    out = [r for text, last in deltas for r in shaper.add(text, last)]
    return out + shaper.finish()


def test_stream_sends_one_response_per_delta_with_the_prompt_first_and_a_final_flag() -> None:
    out = _feed(
        codec.TextResponses(_call(), streaming=True), [(" a", False), ("", False), (" b", True)]
    )
    assert out == [([b"Hi a"], False), ([b" b"], True)]


def test_stream_the_engine_ends_without_a_finish_still_gets_a_final_response() -> None:
    out = _feed(codec.TextResponses(_call(exclude=True), streaming=True), [("a", False)])
    assert out == [([b"a"], False), ([b""], True)]


def test_infer_and_stream_false_send_the_whole_text_once() -> None:
    deltas = [(" a", False), (" b", True)]
    assert _feed(codec.TextResponses(_call(), streaming=False), deltas) == [([b"Hi a b"], True)]
    whole = codec.TextResponses(_call(stream=False, exclude=True), streaming=True)
    assert _feed(whole, deltas) == [([b" a b"], True)]


def test_json_responses_stream_each_document_then_an_empty_final() -> None:
    streamed = codec.JsonResponses(streaming=True)
    out = streamed.add(b"1") + streamed.add(b"2") + streamed.finish()
    assert out == [([b"1"], False), ([b"2"], False), ([], True)]
    whole = codec.JsonResponses(streaming=False)
    assert whole.add(b"1") + whole.add(b"2") + whole.finish() == [([b"1", b"2"], True)]


def test_bytes_response_carries_length_prefixed_elements_and_the_final_flag() -> None:
    req = _request([_text()])
    resp = codec.stream_response(req, "m", "text_output", ([b"ab", b""], True)).infer_response
    assert (resp.id, resp.model_name, resp.outputs[0].shape) == ("r1", "m", [2])
    assert resp.raw_output_contents[0] == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"
    assert resp.parameters[codec.FINAL_FLAG].bool_param is True
    err = codec.stream_error(req, "m", "boom")
    assert (err.error_message, err.infer_response.id) == ("boom", "r1")


def test_model_metadata_advertises_the_platform_tensors() -> None:
    llm = codec.model_metadata("chat", "sim")
    assert {t.name: t.datatype for t in llm.inputs}["max_tokens"] == "INT32"
    assert [(t.name, t.datatype) for t in llm.outputs] == [("text_output", "BYTES")]
    py = codec.model_metadata("echo", "python")
    assert [t.name for t in py.inputs] == ["json"] and py.outputs[0].name == "output"


@pytest.mark.parametrize(("shape", "needle"), [
    ([2**31, 2**31], "more than"),       # claims 4.6e18 elements in a tiny request
    ([10**6, 0], "below 1"),             # zero elements, a million rows to build
    ([-1, -1], "below 1"),
    ([1] * 9, "dimensions"),
])
def test_shapes_are_checked_before_anything_is_built_from_them(shape: list[int],
                                                              needle: str) -> None:
    req = pb.ModelInferRequest(model_name="m", id="r1")
    req.inputs.add(name="x", datatype="INT32", shape=shape)
    req.raw_input_contents.append(struct.pack("<i", 1))
    with pytest.raises(codec.InvalidInput, match=needle):
        codec.python_payload(req)
