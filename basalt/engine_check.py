"""Checks a deployment's engine, model path and engine args before the control plane writes
it: what the engine could load and what its own parser accepts (does I/O: reads the model's
config files, imports vLLM once; starts no engine and runs no user code).

The control plane calls `problems` (in a thread: the first call for vLLM imports it, seconds)
and refuses the deployment when any problem is an error; warnings say what could not be
checked here (vLLM or TensorRT-LLM not installed in the control plane's process).
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from basalt.engine_settings import RUNTIME_KEYS, decode_args, key_problem, normal_key, split

__all__ = ["Problem", "problems"]

ENGINES = ("vllm", "trtllm", "sim", "python")


@dataclass(slots=True, frozen=True)
class Problem:
    """One thing wrong with a deployment: `field` as the API names it (`model_path`,
    `engine_args.max_lora_rank`), what is wrong, and whether it refuses the deployment."""

    field: str
    message: str
    warning: bool = False


def problems(engine: str, model_path: str, engine_args: Mapping[str, Any]) -> list[Problem]:
    """Everything wrong with running `model_path` on `engine` with `engine_args`.

    `engine_args` as a deployment gives them (typed values, or the stored text; dashes or
    underscores). Checks, in order: each key may be set (not one basalt owns); the model
    path holds what the engine loads (skipped when "": the weights come from the node cache,
    checked when fetched); the engine's own settings pass the engine's own parser (vLLM's
    `AsyncEngineArgs` parser and its `__post_init__` checks; TensorRT-LLM's `LlmArgs`,
    unverified). Runtime settings (max_model_len, ...) are checked by the runtime's own
    settings class at start. vLLM is imported once per process; later calls cost
    milliseconds. Safe to call from any thread.
    """
    if engine not in ENGINES:
        return [Problem("engine", f"{engine!r} is not an engine: one of {', '.join(ENGINES)}")]
    found: list[Problem] = []
    seen: dict[str, str] = {}
    for key in engine_args:
        name = normal_key(key)
        if name in seen:
            found.append(Problem(f"engine_args.{key}", f"given twice (also as {seen[name]})"))
        seen[name] = key
        if problem := key_problem(key):
            found.append(Problem(f"engine_args.{key}", problem))
    if found:
        return found
    args = split(decode_args(engine_args))
    if model_path:
        found += _model_problems(engine, Path(model_path))
    found += _settings_problems(engine, model_path, args.engine)
    return found


# -- the model folder ----------------------------------------------------------------------


def _model_problems(engine: str, path: Path) -> list[Problem]:
    if not path.is_dir():
        return [Problem("model_path", f"{str(path)!r} is not a folder here")]
    if engine == "sim":
        return []  # its tokenizer is used when there is one; nothing else is read
    if engine == "python":
        return _truss_problems(path)
    return _hf_problems(engine, path)


def _truss_problems(path: Path) -> list[Problem]:
    """What the python engine imports: `<model_module_dir>/<model_class_filename>` (Truss's
    config.yaml may move them; defaults model/model.py). The code itself is not run here."""
    module_dir, filename = "model", "model.py"
    config = path / "config.yaml"
    if config.is_file():
        try:
            doc = yaml.safe_load(config.read_text()) or {}
        except (OSError, yaml.YAMLError) as e:
            return [Problem("model_path", f"config.yaml is not readable YAML: {e}")]
        if not isinstance(doc, dict):
            return [Problem("model_path", "config.yaml must be a mapping")]
        module_dir = str(doc.get("model_module_dir") or module_dir)
        filename = str(doc.get("model_class_filename") or filename)
    if not (path / module_dir / filename).is_file():
        return [Problem("model_path", f"no {module_dir}/{filename} in {str(path)!r} (a "
                                      f"Truss-style model folder)")]
    return []


def _hf_problems(engine: str, path: Path) -> list[Problem]:
    """A Hugging Face model folder: a config.json naming architectures the engine loads."""
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError:
        return [Problem("model_path", f"no config.json in {str(path)!r} (a Hugging Face "
                                      f"model folder)")]
    except (OSError, ValueError) as e:
        return [Problem("model_path", f"config.json in {str(path)!r} is not readable JSON: {e}")]
    archs = config.get("architectures") if isinstance(config, dict) else None
    if not isinstance(archs, list) or not archs:
        return [Problem("model_path", "config.json names no architectures")]
    if engine != "vllm" or _missing("vllm"):
        return []  # TensorRT-LLM's own list is not checked here (unverified engine)
    from basalt.vllm_args import architectures

    supported = architectures()
    if not any(a in supported for a in archs):
        return [Problem("model_path", f"vLLM cannot load architecture {', '.join(archs)} "
                                      f"(not in its model registry)")]
    return []


# -- the engine's own settings -------------------------------------------------------------


def _settings_problems(engine: str, model_path: str, settings: dict[str, Any]) -> list[Problem]:
    if engine in ("sim", "python"):
        allowed = ", ".join(sorted(RUNTIME_KEYS))
        return [Problem(f"engine_args.{k}", f"not a setting of the {engine} engine (its "
                                            f"settings: {allowed})") for k in settings]
    if engine == "vllm":
        if missing := _missing("vllm"):
            return [Problem("engine_args", f"not checked: vLLM is not importable here "
                                           f"({missing})", warning=True)]
        from basalt.vllm_args import problems as vllm_problems

        return [Problem(f"engine_args.{k}" if k else "engine_args", m)
                for k, m in vllm_problems(model_path, settings)]
    return _trtllm_problems(settings)


def _trtllm_problems(settings: dict[str, Any]) -> list[Problem]:
    """UNVERIFIED (TensorRT-LLM could not be installed where this was written): names
    checked against the fields of TensorRT-LLM's argument models in
    `tensorrt_llm.llmapi.llm_args` (`TorchLlmArgs`, `TrtLlmArgs`; pydantic), which
    `LLM(**kwargs)` validates its keyword arguments with. Values are not checked here."""
    if not settings:
        return []
    if missing := _missing("tensorrt_llm"):
        return [Problem("engine_args", f"not checked: TensorRT-LLM is not importable here "
                                       f"({missing})", warning=True)]
    fields = _trtllm_fields()
    return [Problem(f"engine_args.{k}", "not a TensorRT-LLM LLM argument")
            for k in settings if k not in fields]


@functools.cache
def _trtllm_fields() -> frozenset[str]:
    llm_args = importlib.import_module("tensorrt_llm.llmapi.llm_args")
    models = [getattr(llm_args, n, None) for n in ("TorchLlmArgs", "TrtLlmArgs", "LlmArgs")]
    return frozenset(f for m in models if m is not None for f in getattr(m, "model_fields", {}))


@functools.cache
def _missing(module: str) -> str:
    """Why `module` cannot be imported here ("" when it can); tried once per process, since
    a failing import of an engine costs seconds each time."""
    try:
        if importlib.util.find_spec(module) is None:
            return f"no module named {module}"
        importlib.import_module(module if module != "vllm" else "vllm.engine.arg_utils")
    except Exception as e:  # noqa: BLE001 - ImportError, or a native library failing to load
        return f"{type(e).__name__}: {e}"
    return ""
