"""The python (Truss-style) engine against real model directories under tests/runtime/models."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest

from services.runtime.core.engine import Engine, GenerateInput, SamplingParams
from services.runtime.core.errors import InvalidRequest, NotSupported, RuntimeServiceError
from services.runtime.engines.python_errors import (
    InvalidJsonInput,
    ModelCrashed,
    ModelDefinitionError,
    ModelInputError,
    ModelLoadFailed,
    ModelOutputNotJson,
    Stage,
)
from services.runtime.engines.python_model import (
    PythonModelEngine,
    parse_truss_config,
    to_jsonable,
)

MODELS = Path(__file__).parent / "models"


async def started(name: str) -> PythonModelEngine:
    engine = PythonModelEngine(MODELS / name, f"{name}-served")
    await engine.start()
    return engine


@pytest.fixture
async def echo() -> AsyncIterator[PythonModelEngine]:
    engine = await started("echo")
    yield engine
    await engine.shutdown()


async def collect(engine: PythonModelEngine, payload: object) -> list[object]:
    return [item async for item in engine.predict(payload)]


async def test_echo_loads_and_runs_preprocess_predict_postprocess(echo: PythonModelEngine) -> None:
    assert isinstance(echo, Engine)
    out = await collect(echo, {"text": "hi"})
    assert out == [
        {
            "echo": {"text": "hi"},
            "preprocessed": True,
            "greeting": "hello from data_dir",  # load() read it from data_dir
            "config_model_name": "echo-truss",  # config.yaml reached the model
            "postprocessed": True,
        }
    ]


async def test_start_reports_no_kv_cache_and_reads_truss_config() -> None:
    engine = PythonModelEngine(MODELS / "echo", "served-name")
    info = await engine.start()
    assert (info.model, info.kv_block_size, info.kv_blocks_total) == ("served-name", 0, 0)
    assert engine.truss_config.model_name == "echo-truss"
    assert engine.model_metadata == {"example_model_input": {"text": "hello"}}
    assert engine.truss_config.predict_concurrency == 2
    await engine.shutdown()


async def test_bytes_payload_is_parsed_as_json_and_bad_json_is_an_input_error(
    echo: PythonModelEngine,
) -> None:
    out = await collect(echo, b'{"text": "from bytes"}')
    assert out[0]["echo"] == {"text": "from bytes"}
    with pytest.raises(InvalidJsonInput, match="not valid JSON") as err:
        await collect(echo, b"{not json")
    assert isinstance(err.value, InvalidRequest)


async def test_async_generator_predict_streams_items_in_order() -> None:
    engine = await started("streamer")
    out = await collect(engine, {"n": 4})
    assert out == [{"index": i, "text": f"tok{i}"} for i in range(4)]
    await engine.shutdown()


async def test_sync_generator_streams_and_a_failure_midway_ends_it_with_a_crash() -> None:
    engine = await started("counter")
    assert await collect(engine, {"n": 3}) == [0, 1, 2]
    got: list[object] = []
    with pytest.raises(ModelCrashed, match="counter broke at 2") as err:
        async for item in engine.predict({"n": 5, "fail_at": 2}):
            got.append(item)
    assert got == [0, 1]
    assert err.value.stage is Stage.PREDICT
    assert await collect(engine, {"n": 2}) == [0, 1]  # still serving
    await engine.shutdown()


@pytest.mark.parametrize(
    ("request_", "exc_type", "text"),
    [
        ({"raise": "ValueError"}, "ValueError", "text must not be empty"),
        ({"raise": "KeyError"}, "KeyError", "missing key 'no_such_key'"),
    ],
)
async def test_model_rejecting_input_is_an_invalid_request_and_the_engine_keeps_serving(
    echo: PythonModelEngine, request_: dict, exc_type: str, text: str
) -> None:
    with pytest.raises(ModelInputError) as err:
        await collect(echo, request_)
    assert isinstance(err.value, InvalidRequest)
    assert (err.value.exc_type, err.value.message, err.value.stage) == (
        exc_type,
        text,
        Stage.PREDICT,
    )
    assert text in str(err.value) and "echo-served" in str(err.value)
    assert (await collect(echo, {"text": "after"}))[0]["echo"] == {"text": "after"}


async def test_model_crash_is_internal_not_invalid_and_the_engine_keeps_serving(
    echo: PythonModelEngine,
) -> None:
    with pytest.raises(ModelCrashed, match="RuntimeError: CUDA fell over") as err:
        await collect(echo, {"raise": "RuntimeError"})
    assert isinstance(err.value, RuntimeServiceError)
    assert not isinstance(err.value, InvalidRequest)
    assert (await collect(echo, {"text": "after"}))[0]["echo"] == {"text": "after"}


async def test_output_that_is_not_json_is_reported(echo: PythonModelEngine) -> None:
    with pytest.raises(ModelOutputNotJson, match="set is not JSON-serialisable"):
        await collect(echo, {"return_set": True})


async def test_slow_sync_predict_runs_off_the_event_loop(echo: PythonModelEngine) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.01)

    tick_task = asyncio.create_task(ticker())
    predict = asyncio.create_task(collect(echo, {"sleep": 0.4}))
    await asyncio.sleep(0.1)
    assert echo.stats().num_running == 1
    await predict
    tick_task.cancel()
    assert ticks >= 20  # the loop kept turning while predict slept in its thread
    assert echo.stats().num_running == 0


async def test_predict_concurrency_from_config_lets_two_predicts_overlap(
    echo: PythonModelEngine,
) -> None:
    loop = asyncio.get_running_loop()
    t0 = loop.time()
    await asyncio.gather(collect(echo, {"sleep": 0.3}), collect(echo, {"sleep": 0.3}))
    assert loop.time() - t0 < 0.55


async def test_llm_calls_are_not_supported_and_kv_events_end_at_shutdown() -> None:
    engine = await started("streamer")
    req = GenerateInput("r1", [1, 2, 3], SamplingParams())
    with pytest.raises(NotSupported, match="use Predict"):
        async for _ in engine.generate(req):
            pass
    with pytest.raises(NotSupported):
        await engine.load_lora("a", "/tmp/a")
    assert engine.loras() == [] and await engine.abort("r1") is False
    stats = engine.stats()
    assert (stats.num_running, stats.kv_blocks_total, stats.kv_usage) == (0, 0, 0.0)

    batches: list[object] = []

    async def drain() -> None:
        async for batch in engine.kv_events():
            batches.append(batch)

    task = asyncio.create_task(drain())
    await asyncio.sleep(0.05)
    assert not task.done()  # waits quietly while serving
    await engine.shutdown()
    await asyncio.wait_for(task, 1.0)
    assert batches == []


def write_model(root: Path, source: str) -> Path:
    (root / "model").mkdir(parents=True)
    (root / "model" / "model.py").write_text(source)
    return root


async def test_load_failure_names_the_stage_and_error(tmp_path: Path) -> None:
    src = "class Model:\n    def load(self):\n        raise OSError('weights missing')\n"
    src += "    def predict(self, x):\n        return x\n"
    engine = PythonModelEngine(write_model(tmp_path, src), "broken")
    with pytest.raises(ModelLoadFailed, match=r"load\(\): OSError: weights missing"):
        await engine.start()
    await engine.shutdown()


async def test_directory_without_a_model_class_is_a_definition_error(tmp_path: Path) -> None:
    with pytest.raises(ModelDefinitionError, match="model/model.py not found"):
        await PythonModelEngine(tmp_path, "empty").start()
    engine = PythonModelEngine(write_model(tmp_path / "x", "class Other:\n    pass\n"), "x")
    with pytest.raises(ModelDefinitionError, match="no class 'Model'"):
        await engine.start()


async def test_streaming_predict_with_postprocess_is_refused_like_truss(tmp_path: Path) -> None:
    src = (
        "class Model:\n"
        "    def predict(self, x):\n        yield x\n"
        "    def postprocess(self, y):\n        return y\n"
    )
    engine = PythonModelEngine(write_model(tmp_path, src), "pp")
    await engine.start()
    with pytest.raises(ModelDefinitionError, match="postprocess"):
        await collect(engine, {"a": 1})
    await engine.shutdown()


def test_truss_config_rejects_bad_predict_concurrency() -> None:
    with pytest.raises(ModelDefinitionError, match="predict_concurrency"):
        parse_truss_config({"runtime": {"predict_concurrency": 0}}, "dir")
    cfg = parse_truss_config({"model_class_name": "Custom", "data_dir": "weights"}, "dir")
    assert (cfg.model_class_name, cfg.data_dir, cfg.predict_concurrency) == ("Custom", "weights", 1)


def test_numpy_outputs_become_plain_json() -> None:
    assert to_jsonable({"scores": np.array([0.5, 1.5]), "n": np.int64(3)}) == {
        "scores": [0.5, 1.5],
        "n": 3,
    }
