"""KServe v2 on a real runtime replica, driven by the unmodified tritonclient.grpc.

tritonclient runs only in a spawned helper process (tests/triton_client.py); this module imports
neither it nor basalt.pb.kserve_pb2. Request decoding is tested in tests/common/test_kserve_codec.py.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from basalt_tools.natsserver import NatsServer
from tests.runtime_process import RuntimeProcess
from tests.triton_client import (
    Spec,
    TritonHelper,
    client_health,
    client_infer,
    client_model_ready,
    client_stream,
    text,
)

MODELS = Path(__file__).parent / "models"
SIM_MODEL = "tiny-sim"
PY_MODEL = "echo"
OUT = "output"  # the python model's output tensor


# ---- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def triton() -> Iterator[TritonHelper]:
    helper = TritonHelper()
    yield helper
    helper.close()


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
    h = triton(client_health, sim, SIM_MODEL)
    assert (h["live"], h["ready"], h["model_ready"]) == (True, True, True)
    assert triton(client_model_ready, sim, ["no-such-model"]) == {"no-such-model": False}
    assert h["server"] == "basalt"
    assert h["inputs"]["text_input"] == "BYTES" and h["inputs"]["max_tokens"] == "INT32"
    assert h["outputs"] == {"text_output": "BYTES"}


@pytest.mark.integration
def test_infer_returns_generated_text_after_the_prompt(triton, sim: str) -> None:
    max_tokens = ("max_tokens", "INT32", [6], [1])
    out = triton(client_infer, sim, SIM_MODEL, [text("Hello there"), max_tokens])
    whole = out["outputs"][0]
    assert whole.startswith(b"Hello there") and len(whole) > len(b"Hello there")
    # Triton's [1, 1] shape, sampling as request parameters, prompt excluded from the output
    exclude = ("exclude_input_in_output", "BOOL", [True], [1, 1])
    out = triton(
        client_infer, sim, SIM_MODEL, [text("Hello there", [1, 1]), exclude],
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
    out = triton(client_infer, sim, SIM_MODEL, specs)
    assert status in out["status"] and needle in out["message"]


@pytest.mark.integration
def test_unknown_model_is_not_found(triton, sim: str) -> None:
    out = triton(client_infer, sim, "no-such-model", [text("x")])
    assert "NOT_FOUND" in out["status"] and "no-such-model" in out["message"]


@pytest.mark.integration
def test_stream_sends_deltas_then_a_final_response_and_survives_a_bad_request(
    triton, sim: str
) -> None:
    n = ("max_tokens", "INT32", [8], [1])
    exclude = ("exclude_input_in_output", "BOOL", [True], [1])
    out = triton(
        client_stream, sim, SIM_MODEL,
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
    out = triton(client_infer, python_model, PY_MODEL, [("json", "BYTES", [doc], [1])], output=OUT)
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
    out = triton(client_infer, python_model, PY_MODEL, tensors, output=OUT)
    assert json.loads(out["outputs"][0])["echo"] == {"ids": [[1, 2], [3, 4]], "name": "x"}


@pytest.mark.integration
def test_python_model_errors_map_to_status_and_it_keeps_serving(triton, python_model: str) -> None:
    def call(payload: str) -> dict[str, Any]:
        spec = [("json", "BYTES", [payload], [1])]
        return triton(client_infer, python_model, PY_MODEL, spec, output=OUT)

    rejected = call(json.dumps({"raise": "ValueError"}))
    assert "INVALID_ARGUMENT" in rejected["status"]
    assert "text must not be empty" in rejected["message"]
    crashed = call(json.dumps({"raise": "RuntimeError"}))
    assert "INTERNAL" in crashed["status"] and "CUDA fell over" in crashed["message"]
    assert "INVALID_ARGUMENT" in call("{not json")["status"]
    assert json.loads(call(json.dumps({"text": "still here"}))["outputs"][0])["echo"] == {
        "text": "still here"
    }
