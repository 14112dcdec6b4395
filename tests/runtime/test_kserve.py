"""KServe v2 on a real runtime replica, driven by the unmodified tritonclient.grpc.

tritonclient and basalt.pb.kserve_pb2 register the same `inference.*` protobuf symbols, so they
cannot share a process. tritonclient runs only in a spawned helper process (the `_client_*`
functions below run there); this module imports neither at the top. The pure request-decoding
tests import the servicer's module lazily, in this (tritonclient-free) process.
"""

from __future__ import annotations

import json
import multiprocessing
import struct
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from basalt.natsserver import NatsServer
from tests.runtime_process import RuntimeProcess

MODELS = Path(__file__).parent / "models"
SIM_MODEL = "tiny-sim"
PY_MODEL = "echo"

# An input spec, built into a tritonclient InferInput in the helper: (name, datatype, values, shape)
Spec = tuple[str, str, list[Any], list[int]]


def text(prompt: str, shape: list[int] | None = None) -> Spec:
    return ("text_input", "BYTES", [prompt], shape or [1])


# ---- run in the tritonclient helper process -------------------------------------------------


def _inputs(specs: list[Spec]) -> list[Any]:
    import numpy as np
    import tritonclient.grpc as tc

    dtypes = {"BYTES": object, "BOOL": bool, "INT32": np.int32, "UINT64": np.uint64,
              "INT64": np.int64, "FP32": np.float32}  # fmt: skip
    out = []
    for name, datatype, values, shape in specs:
        tensor = tc.InferInput(name, shape, datatype)
        tensor.set_data_from_numpy(np.array(values, dtype=dtypes[datatype]).reshape(shape))
        out.append(tensor)
    return out


def _client_health(address: str, model: str) -> dict[str, Any]:
    import tritonclient.grpc as tc

    c = tc.InferenceServerClient(address)
    meta = c.get_model_metadata(model)
    return {
        "live": c.is_server_live(),
        "ready": c.is_server_ready(),
        "model_ready": c.is_model_ready(model),
        "other_model_ready": c.is_model_ready("no-such-model"),
        "server": c.get_server_metadata().name,
        "inputs": {t.name: t.datatype for t in meta.inputs},
        "outputs": {t.name: t.datatype for t in meta.outputs},
    }


def _client_infer(
    address: str, model: str, specs: list[Spec], params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """{"outputs": [bytes...]} or {"status": ..., "message": ...} when the server refused."""
    import tritonclient.grpc as tc
    from tritonclient.utils import InferenceServerException

    c = tc.InferenceServerClient(address)
    output = "output" if model == PY_MODEL else "text_output"
    try:
        result = c.infer(model, _inputs(specs), parameters=params)
    except InferenceServerException as e:
        return {"status": str(e.status()), "message": e.message()}
    return {"outputs": list(result.as_numpy(output).ravel())}


def _client_stream(address: str, model: str, requests: list[tuple[str, list[Spec]]]) -> list[Any]:
    """Every callback on one stream, in arrival order: (id, text, final) or ("error", message)."""
    import queue

    import tritonclient.grpc as tc

    got: queue.Queue[Any] = queue.Queue()
    c = tc.InferenceServerClient(address)
    c.start_stream(callback=lambda result, error: got.put((result, error)))
    for request_id, specs in requests:
        c.async_stream_infer(model, _inputs(specs), request_id=request_id)
    c.stop_stream()  # waits for every response
    out: list[Any] = []
    while not got.empty():
        result, error = got.get()
        if error is not None:
            out.append(("error", error.message()))
            continue
        resp = result.get_response()
        texts = b"".join(result.as_numpy("text_output").ravel()).decode(errors="replace")
        out.append((resp.id, texts, resp.parameters["triton_final_response"].bool_param))
    return out


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton() -> Iterator[Callable[..., Any]]:
    """Runs a `_client_*` function in the helper process and returns its result."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        yield lambda fn, *args: pool.submit(fn, *args).result(timeout=120)


@pytest.fixture(scope="module")
def sim(nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    proc = RuntimeProcess(
        nats_server.url,
        tmp_path_factory.mktemp("kserve-sim"),
        engine="sim",
        replica_id="ks-sim",
        extra=["--model-name", SIM_MODEL, "--deployment", "kserve", "--sim-time-scale", "0.05"],
    ).start()
    yield proc.address
    proc.kill()


@pytest.fixture(scope="module")
def python_model(
    nats_server: NatsServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    proc = RuntimeProcess(
        nats_server.url,
        tmp_path_factory.mktemp("kserve-py"),
        engine="python",
        replica_id="ks-py",
        extra=["--model", str(MODELS / "echo"), "--model-name", PY_MODEL, "--deployment", "kserve"],
    ).start()
    yield proc.address
    proc.kill()


# ---- LLM engine (sim) ------------------------------------------------------------------------


@pytest.mark.integration
def test_health_and_metadata_follow_triton_llm_convention(triton, sim: str) -> None:
    h = triton(_client_health, sim, SIM_MODEL)
    assert (h["live"], h["ready"], h["model_ready"], h["other_model_ready"]) == (
        True, True, True, False,
    )  # fmt: skip
    assert h["server"] == "basalt"
    assert h["inputs"]["text_input"] == "BYTES" and h["inputs"]["max_tokens"] == "INT32"
    assert h["outputs"] == {"text_output": "BYTES"}


@pytest.mark.integration
def test_infer_returns_generated_text_after_the_prompt(triton, sim: str) -> None:
    max_tokens = ("max_tokens", "INT32", [6], [1])
    out = triton(_client_infer, sim, SIM_MODEL, [text("Hello there"), max_tokens])
    whole = out["outputs"][0]
    assert whole.startswith(b"Hello there") and len(whole) > len(b"Hello there")
    # Triton's [1, 1] shape, sampling as request parameters, prompt excluded from the output
    exclude = ("exclude_input_in_output", "BOOL", [True], [1, 1])
    out = triton(
        _client_infer, sim, SIM_MODEL, [text("Hello there", [1, 1]), exclude],
        {"max_tokens": 4, "temperature": "0.5"},
    )  # fmt: skip
    assert out["outputs"][0] and not out["outputs"][0].startswith(b"Hello there")


@pytest.mark.integration
@pytest.mark.parametrize(
    ("specs", "status", "needle"),
    [
        ([("max_tokens", "INT32", [4], [1])], "INVALID_ARGUMENT", "'text_input'"),
        ([("text_input", "INT32", [7], [1])], "INVALID_ARGUMENT", "must be BYTES, got INT32"),
        ([text("x"), ("temperature", "FP32", [-1.0], [1])], "INVALID_ARGUMENT", "temperature"),
        ([text("x"), ("max_tokens", "INT32", [0], [1])], "INVALID_ARGUMENT", "max_tokens"),
        ([text("x"), ("stream", "BOOL", [True], [1])], "INVALID_ARGUMENT", "ModelStreamInfer"),
    ],
)
def test_bad_input_is_invalid_argument_with_a_clear_message(
    triton, sim: str, specs: list[Spec], status: str, needle: str
) -> None:
    out = triton(_client_infer, sim, SIM_MODEL, specs)
    assert status in out["status"] and needle in out["message"]


@pytest.mark.integration
def test_unknown_model_is_not_found(triton, sim: str) -> None:
    out = triton(_client_infer, sim, "no-such-model", [text("x")])
    assert "NOT_FOUND" in out["status"] and "no-such-model" in out["message"]


@pytest.mark.integration
def test_stream_sends_deltas_then_a_final_response_and_survives_a_bad_request(
    triton, sim: str
) -> None:
    n = ("max_tokens", "INT32", [8], [1])
    exclude = ("exclude_input_in_output", "BOOL", [True], [1])
    out = triton(
        _client_stream, sim, SIM_MODEL,
        [("a", [text("first"), n, exclude]), ("bad", [n]), ("b", [text("second"), n, exclude])],
    )  # fmt: skip
    errors = [msg for kind, msg, *_ in out if kind == "error"]
    assert len(errors) == 1 and "text_input" in errors[0]
    for request_id in ("a", "b"):  # the bad request did not end the stream
        responses = [r for r in out if r[0] == request_id]
        assert len(responses) >= 2, responses
        assert [final for _, _, final in responses] == [False] * (len(responses) - 1) + [True]
        assert "".join(t for _, t, _ in responses)


# ---- python engine ---------------------------------------------------------------------------


@pytest.mark.integration
def test_python_model_takes_a_json_document_and_returns_json(triton, python_model: str) -> None:
    doc = json.dumps({"text": "hi"})
    out = triton(_client_infer, python_model, PY_MODEL, [("json", "BYTES", [doc], [1])])
    assert [json.loads(o) for o in out["outputs"]] == [
        {
            "echo": {"text": "hi"},
            "preprocessed": True,
            "greeting": "hello from data_dir",
            "config_model_name": "echo-truss",
            "postprocessed": True,
        }
    ]
    tensors = [("ids", "INT32", [1, 2, 3, 4], [2, 2]), ("name", "BYTES", ["x"], [1])]
    out = triton(_client_infer, python_model, PY_MODEL, tensors)
    assert json.loads(out["outputs"][0])["echo"] == {"ids": [[1, 2], [3, 4]], "name": "x"}


@pytest.mark.integration
def test_python_model_errors_map_to_status_and_it_keeps_serving(triton, python_model: str) -> None:
    def call(payload: str) -> dict[str, Any]:
        return triton(_client_infer, python_model, PY_MODEL, [("json", "BYTES", [payload], [1])])

    rejected = call(json.dumps({"raise": "ValueError"}))
    assert "INVALID_ARGUMENT" in rejected["status"]
    assert "text must not be empty" in rejected["message"]
    crashed = call(json.dumps({"raise": "RuntimeError"}))
    assert "INTERNAL" in crashed["status"] and "CUDA fell over" in crashed["message"]
    assert "INVALID_ARGUMENT" in call("{not json")["status"]
    assert json.loads(call(json.dumps({"text": "still here"}))["outputs"][0])["echo"] == {
        "text": "still here"
    }


# ---- request decoding (pure; no server) ------------------------------------------------------


def _request(inputs: list[tuple[str, str, list[int], bytes]], **params: Any) -> Any:
    """A ModelInferRequest with raw_input_contents, as tritonclient sends it."""
    from basalt.pb import kserve_pb2 as pb

    req = pb.ModelInferRequest(model_name="m")
    for name, datatype, shape, raw in inputs:
        req.inputs.add(name=name, datatype=datatype, shape=shape)
        req.raw_input_contents.append(raw)
    for key, value in params.items():
        field = {bool: "bool_param", int: "int64_param", str: "string_param"}[type(value)]
        setattr(req.parameters[key], field, value)
    return req


def _raw_bytes(*items: bytes) -> bytes:
    return b"".join(struct.pack("<I", len(i)) + i for i in items)


def test_llm_request_decoding_reads_raw_contents_and_ranks_its_sources() -> None:
    from services.runtime.kserve import parse_llm_request

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
    call = parse_llm_request(req)
    assert call.text == "héllo"
    s = call.sampling
    # tensor beats sampling_parameters beats request parameters
    assert (s.max_tokens, s.temperature, s.top_p, s.top_k, s.seed) == (3, 0.25, 0.5, 0, 7)
    assert s.stop == ["\n"] and call.lora_name == "sql"
    assert call.stream is None and call.exclude_input is False


def test_llm_request_decoding_reads_typed_contents_too() -> None:
    from basalt.pb import kserve_pb2 as pb
    from services.runtime.kserve import parse_llm_request

    req = pb.ModelInferRequest(model_name="m")
    req.inputs.add(name="text_input", datatype="BYTES", shape=[1]).contents.bytes_contents.append(
        b"hi"
    )
    req.inputs.add(name="stream", datatype="BOOL", shape=[1]).contents.bool_contents.append(True)
    call = parse_llm_request(req)
    assert (call.text, call.stream) == ("hi", True)


@pytest.mark.parametrize(
    ("inputs", "needle"),
    [
        ([("text_input", "BYTES", [2], _raw_bytes(b"a", b"b"))], "exactly one value"),
        ([("text_input", "BYTES", [1], b"\x09\x00\x00\x00ab")], "overruns"),
        ([("text_input", "BYTES", [1], _raw_bytes(b"\xff\xfe"))], "not UTF-8"),
        ([("text_input", "BYTES", [1], _raw_bytes(b"x")), ("bogus", "INT32", [1], b"\0" * 4)],
         "unexpected input 'bogus'"),
    ],
)  # fmt: skip
def test_malformed_llm_requests_are_refused_with_the_reason(inputs: list, needle: str) -> None:
    from services.runtime.errors import InvalidRequest
    from services.runtime.kserve import parse_llm_request

    with pytest.raises(InvalidRequest, match=needle):
        parse_llm_request(_request(inputs))


def test_python_payload_passes_a_json_document_through_or_builds_a_dict() -> None:
    from services.runtime.kserve import python_payload

    doc = _request([("json", "BYTES", [1], _raw_bytes(b'[1, {"a": null}]'))])
    assert python_payload(doc) == [1, {"a": None}]
    tensors = _request(
        [("xs", "FP64", [3], struct.pack("<3d", 1.0, 2.5, 3.0)), ("flag", "BOOL", [1], b"\x01")]
    )
    assert python_payload(tensors) == {"xs": [1.0, 2.5, 3.0], "flag": True}
