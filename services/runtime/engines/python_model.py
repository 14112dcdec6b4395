"""The python engine: serves any model with Truss's model interface (does I/O: imports user code).

A model directory holds `model/model.py` defining `class Model` with `__init__(self, **kwargs)`,
`load()` and `predict(model_input)`, optionally `preprocess` and `postprocess`. Each may be sync
or async; `predict` may be a (sync or async) generator, and then the result streams. Sync user
code runs in a thread pool, so the runtime's event loop is never blocked.

Of Truss's `config.yaml` (optional) this engine honours:
- `model_name`, `model_metadata`: kept on `engine.truss_config` (the served name is still the
  runtime's --model-name);
- `model_module_dir`, `model_class_filename`, `model_class_name`, `data_dir`: where the class
  and its data live (defaults `model`, `model.py`, `Model`, `data`);
- `runtime.predict_concurrency` (default 1, as in Truss): predict() calls running at once.
The whole document is passed to the model as `config`; the model also gets `data_dir`,
`secrets={}` and, when the runtime has a --weights-dir (the node cache's copy of its weights),
`weights_dir` (each only when its `__init__` accepts it). Everything else (requirements, resources, secrets, external_data, ...) is not acted
on here; a later issue. Like Truss, postprocess is refused when predict streams.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
import traceback
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import aclosing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import yaml

from basalt import log as blog
from basalt.kvevents import KvEvent
from services.runtime.core.engine import EngineInfo, EngineStats, GenerateChunk, GenerateInput
from services.runtime.core.errors import NotSupported

from .python_errors import (
    InvalidJsonInput,
    ModelCrashed,
    ModelDefinitionError,
    ModelLoadFailed,
    ModelOutputNotJson,
    Stage,
    classify_user_exception,
)

log = blog.get_logger(__name__)

_DONE = object()


@dataclass(slots=True, frozen=True)
class TrussConfig:
    """The parts of a Truss config.yaml this engine reads; `raw` is the whole document."""

    model_name: str | None = None
    model_metadata: dict[str, Any] = field(default_factory=dict)
    model_module_dir: str = "model"
    model_class_filename: str = "model.py"
    model_class_name: str = "Model"
    data_dir: str = "data"
    predict_concurrency: int = 1
    raw: dict[str, Any] = field(default_factory=dict)


def parse_truss_config(doc: Any, source: str) -> TrussConfig:
    """A TrussConfig from a parsed config.yaml (None: an empty file). Raises ModelDefinitionError."""
    if doc is None:
        return TrussConfig()
    if not isinstance(doc, dict):
        raise ModelDefinitionError(
            source, f"config.yaml must be a mapping, got {type(doc).__name__}"
        )
    metadata = doc.get("model_metadata") or {}
    runtime = doc.get("runtime") or {}
    if not isinstance(metadata, dict) or not isinstance(runtime, dict):
        raise ModelDefinitionError(
            source, "config.yaml: model_metadata and runtime must be mappings"
        )
    concurrency = runtime.get("predict_concurrency", 1)
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ModelDefinitionError(
            source,
            f"config.yaml: runtime.predict_concurrency must be a positive integer, "
            f"got {concurrency!r}",
        )
    name = doc.get("model_name")
    return TrussConfig(
        model_name=str(name) if name is not None else None,
        model_metadata=metadata,
        model_module_dir=str(doc.get("model_module_dir") or "model"),
        model_class_filename=str(doc.get("model_class_filename") or "model.py"),
        model_class_name=str(doc.get("model_class_name") or "Model"),
        data_dir=str(doc.get("data_dir") or "data"),
        predict_concurrency=concurrency,
        raw=doc,
    )


def read_truss_config(model_dir: Path) -> TrussConfig:
    path = model_dir / "config.yaml"
    if not path.is_file():
        return TrussConfig()
    try:
        doc = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        raise ModelDefinitionError(str(model_dir), f"config.yaml is not valid YAML: {e}") from e
    return parse_truss_config(doc, str(model_dir))


def parse_payload(payload: Any) -> Any:
    """The model input: bytes are a JSON document to parse; anything else is already parsed."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            return json.loads(bytes(payload))
        except (UnicodeDecodeError, ValueError) as e:
            raise InvalidJsonInput(str(e)) from e
    return payload


def to_jsonable(value: Any) -> Any:
    """`value` as plain JSON types: pydantic models and numpy values are converted.

    Raises TypeError or ValueError when something in it has no JSON form.
    """
    converted = False

    def fallback(obj: Any) -> Any:
        nonlocal converted
        for method in ("model_dump", "tolist"):  # pydantic v2, numpy arrays and scalars
            if callable(getattr(obj, method, None)):
                converted = True
                return obj.model_dump(mode="json") if method == "model_dump" else obj.tolist()
        raise TypeError(f"{type(obj).__name__} is not JSON-serialisable")

    text = json.dumps(value, default=fallback)
    return json.loads(text) if converted else value


def _init_kwargs(cls: type, offered: dict[str, Any]) -> dict[str, Any]:
    """The subset of `offered` that Model.__init__ accepts (all of it when it takes **kwargs)."""
    params = inspect.signature(cls).parameters.values()
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params):
        return offered
    names = {p.name for p in params}
    return {k: v for k, v in offered.items() if k in names}


def _import_model_class(model_dir: Path, cfg: TrussConfig) -> type:
    path = model_dir / cfg.model_module_dir / cfg.model_class_filename
    if not path.is_file():
        raise ModelDefinitionError(str(model_dir), f"{path.relative_to(model_dir)} not found")
    module_name = f"basalt_user_model_{abs(hash(str(path.resolve())))}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    if spec is None or spec.loader is None:
        raise ModelDefinitionError(str(model_dir), f"cannot import {path}")
    module = importlib.util.module_from_spec(spec)
    if str(path.parent) not in sys.path:  # let model.py import modules beside it, as in Truss
        sys.path.insert(0, str(path.parent))
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except Exception as e:
        sys.modules.pop(module_name, None)
        raise ModelLoadFailed(str(model_dir), Stage.IMPORT, type(e).__name__, str(e)) from e
    cls = getattr(module, cfg.model_class_name, None)
    if not isinstance(cls, type):
        raise ModelDefinitionError(
            str(model_dir), f"{path.name} defines no class {cfg.model_class_name!r}"
        )
    if not callable(getattr(cls, "predict", None)):
        raise ModelDefinitionError(str(model_dir), f"class {cfg.model_class_name} has no predict()")
    return cls


class PythonModelEngine:
    """The Engine protocol over one Truss-style model: Predict only, no KV cache, no LoRA."""

    kind = "python"

    def __init__(self, model_dir: Path, model_name: str, weights_dir: Path | None = None) -> None:
        self.model_dir = Path(model_dir)
        self.weights_dir = Path(weights_dir) if weights_dir else None
        self.model_name = model_name
        self.truss_config = TrussConfig()
        self._model: Any = None
        self._pool: ThreadPoolExecutor | None = None
        self._predict_slots = asyncio.Semaphore(1)
        self._num_running = 0
        self._num_waiting = 0
        self._closed = asyncio.Event()

    @property
    def model_metadata(self) -> dict[str, Any]:
        return self.truss_config.model_metadata

    async def start(self) -> EngineInfo:
        """Import model.py, build the Model and run its load() (in a thread when sync)."""
        cfg = await asyncio.to_thread(read_truss_config, self.model_dir)
        self.truss_config = cfg
        self._predict_slots = asyncio.Semaphore(cfg.predict_concurrency)
        self._pool = ThreadPoolExecutor(
            max_workers=cfg.predict_concurrency + 4, thread_name_prefix="python-model"
        )
        try:
            await self._load(cfg)
        except BaseException:
            self._pool.shutdown(wait=False, cancel_futures=True)
            raise
        log.info(
            "python_model_loaded",
            model=self.model_name,
            dir=str(self.model_dir),
            truss_model_name=cfg.model_name,
        )
        return EngineInfo(
            model=self.model_name, kv_block_size=0, kv_blocks_total=0, max_model_len=0
        )

    async def _load(self, cfg: TrussConfig) -> None:
        loop = asyncio.get_running_loop()
        model = await loop.run_in_executor(self._pool, self._build_model, cfg)
        load = getattr(model, "load", None)
        if callable(load):
            try:
                await self._run_user(load)
            except Exception as e:
                raise ModelLoadFailed(
                    str(self.model_dir), Stage.LOAD, type(e).__name__, str(e)
                ) from e
        self._model = model

    def _build_model(self, cfg: TrussConfig) -> Any:
        cls = _import_model_class(self.model_dir, cfg)
        offered: dict[str, Any] = {
            "config": cfg.raw, "data_dir": self.model_dir / cfg.data_dir, "secrets": {}}
        if self.weights_dir is not None:
            offered["weights_dir"] = self.weights_dir
        try:
            return cls(**_init_kwargs(cls, offered))
        except Exception as e:
            raise ModelLoadFailed(str(self.model_dir), Stage.INIT, type(e).__name__, str(e)) from e

    async def _run_user(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Call user code: coroutines on the loop, plain functions in the pool."""
        if inspect.iscoroutinefunction(fn) or inspect.isasyncgenfunction(fn):
            result = fn(*args)
        else:
            loop = asyncio.get_running_loop()
            result = await loop.run_in_executor(self._pool, fn, *args)
        if inspect.isawaitable(result):
            result = await result
        return result

    async def _stage(self, stage: Stage, fn: Callable[..., Any], arg: Any) -> Any:
        try:
            return await self._run_user(fn, arg)
        except Exception as e:
            raise self._user_error(stage, e) from e

    def _user_error(self, stage: Stage, exc: Exception) -> Exception:
        err = classify_user_exception(self.model_name, stage, exc)
        if isinstance(err, ModelCrashed):  # a bug in the model: keep its traceback in the log
            log.error(
                "python_model_crashed",
                model=self.model_name,
                stage=stage.value,
                error=str(err),
                traceback="".join(traceback.format_exception(exc)),
            )
        else:
            log.info(
                "python_model_rejected_input",
                model=self.model_name,
                stage=stage.value,
                error=str(err),
            )
        return err

    def _encode(self, item: Any) -> Any:
        try:
            return to_jsonable(item)
        except (TypeError, ValueError) as e:
            raise ModelOutputNotJson(self.model_name, type(item).__name__, str(e)) from e

    async def predict(self, payload: Any) -> AsyncGenerator[Any, None]:
        """preprocess -> predict -> postprocess; one item for a plain return, many for a stream.

        `payload` is a parsed JSON value, or bytes holding a JSON document.
        """
        model = self._require_started()
        model_input = parse_payload(payload)
        self._num_running += 1
        try:
            if callable(getattr(model, "preprocess", None)):
                model_input = await self._stage(Stage.PREPROCESS, model.preprocess, model_input)
            self._num_waiting += 1
            try:
                await self._predict_slots.acquire()
            finally:
                self._num_waiting -= 1
            try:
                result = await self._stage(Stage.PREDICT, model.predict, model_input)
                if inspect.isgenerator(result) or inspect.isasyncgen(result):
                    async for item in self._stream(result):
                        yield item
                    return
            finally:
                self._predict_slots.release()
            if callable(getattr(model, "postprocess", None)):
                result = await self._stage(Stage.POSTPROCESS, model.postprocess, result)
            yield self._encode(result)
        finally:
            self._num_running -= 1

    async def _stream(self, result: Any) -> AsyncIterator[Any]:
        if callable(getattr(self._model, "postprocess", None)):
            raise ModelDefinitionError(
                str(self.model_dir),
                "predict() streams (returns a generator), so postprocess() cannot be used; "
                "do all processing in predict()",
            )
        items = cast(
            AsyncGenerator[Any, None],
            result if inspect.isasyncgen(result) else self._pull_in_pool(result),
        )
        async with aclosing(items):
            while True:
                try:
                    item = await anext(items, _DONE)
                except Exception as e:
                    raise self._user_error(Stage.PREDICT, e) from e
                if item is _DONE:
                    return
                yield self._encode(item)

    async def _pull_in_pool(self, gen: Iterator[Any]) -> AsyncGenerator[Any, None]:
        """A sync generator's items, each next() run in the pool; closed there when abandoned."""
        loop = asyncio.get_running_loop()
        finished = False
        try:
            while True:
                item = await loop.run_in_executor(self._pool, next, gen, _DONE)
                if item is _DONE:
                    finished = True
                    return
                yield item
        finally:
            close = getattr(gen, "close", None)
            if not finished and callable(close) and self._pool is not None:
                try:
                    await loop.run_in_executor(self._pool, close)
                except (RuntimeError, ValueError):  # pool shut down, or next() still running
                    pass

    def _require_started(self) -> Any:
        if self._model is None:
            raise NotSupported(f"model {self.model_name!r} is not loaded yet")
        return self._model

    async def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        raise NotSupported(
            f"model {self.model_name!r} is a python model: use Predict (or KServe with JSON "
            "inputs), not Generate"
        )
        yield  # pragma: no cover  (makes this an async generator)

    async def abort(self, request_id: str) -> bool:
        return False

    async def kv_events(self) -> AsyncIterator[list[KvEvent]]:
        """No KV cache: yields nothing, and ends when the engine shuts down."""
        await self._closed.wait()
        return
        yield  # pragma: no cover

    def stats(self) -> EngineStats:
        return EngineStats(
            num_running=self._num_running - self._num_waiting,
            num_waiting=self._num_waiting,
            kv_blocks_active=0,
            kv_blocks_total=0,
        )

    def loras(self) -> list[str]:
        return []

    async def load_lora(self, name: str, path: str) -> None:
        raise NotSupported(
            f"model {self.model_name!r} is a python model: LoRA adapters do not apply"
        )

    async def unload_lora(self, name: str) -> None:
        raise NotSupported(
            f"model {self.model_name!r} is a python model: LoRA adapters do not apply"
        )

    async def shutdown(self) -> None:
        self._closed.set()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
