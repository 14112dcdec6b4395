"""vLLM's own engine-argument parser, built once: engine settings become `vllm serve` flags
and are parsed by the parser `vllm serve` uses, so names, types and choices are vLLM's
(imports vLLM on first use, seconds; no other I/O).

One path serves the runtime, which builds `AsyncEngineArgs` from the parsed flags, and the
control plane, which checks a deployment's settings before it writes it
(`basalt.engine_check`). Every function here may be called from any thread.
"""

from __future__ import annotations

import argparse
import difflib
import json
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["VllmArgError", "architectures", "engine_args", "flag_words", "names", "problems"]

_lock = threading.Lock()
_parser: Any = None
_names: frozenset[str] = frozenset()


class VllmArgError(ValueError):
    """vLLM's parser refused a setting; `key` is the setting ("" when it is not one's)."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key
        self.message = message


def _make_parser() -> Any:
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    class RaisingParser(FlexibleArgumentParser):  # type: ignore[misc]
        """argparse exits on a bad flag; here a bad setting is an answer, not an exit."""

        def error(self, message: str) -> Any:
            raise VllmArgError("", message)

    # No prefix matching: `max_lora` must not quietly mean `max_lora_rank`.
    parser = RaisingParser(prog="vllm", add_help=False, allow_abbrev=False)
    return AsyncEngineArgs.add_cli_args(parser)


def _get() -> Any:
    global _parser, _names
    with _lock:
        if _parser is None:
            parser = _make_parser()
            _names = frozenset(a.dest for a in parser._actions if a.option_strings)
            _parser = parser
        return _parser


def names() -> frozenset[str]:
    """Every vLLM engine argument's name (underscores)."""
    _get()
    return _names


def _action(key: str) -> Any:
    """vLLM's argparse action for setting `key`; VllmArgError when there is none."""
    option = "--" + key.replace("_", "-")
    action = _get()._option_string_actions.get(option)
    if action is None:
        close = difflib.get_close_matches(key, sorted(_names), n=1, cutoff=0.7)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise VllmArgError(key, f"not a vLLM engine argument{hint}")
    if action.dest != key:  # `no_enforce_eager`, or an alias
        raise VllmArgError(key, f"write it as {action.dest}"
                           + (": false" if option.startswith("--no-") else ""))
    return action


def _text(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def _as_bool(key: str, value: Any) -> bool:
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    if not isinstance(value, bool):
        raise VllmArgError(key, f"expects true or false, got {value!r}")
    return value


def flag_words(key: str, value: Any) -> list[str]:
    """One setting as `vllm serve` words: `--max-lora-rank=16`, `--enforce-eager`,
    `--no-enable-lora`, `--speculative-config={...}`; None: nothing (vLLM's default)."""
    action = _action(key)
    option = "--" + key.replace("_", "-")
    if value is None:
        return []
    if isinstance(action, argparse.BooleanOptionalAction):
        return [option] if _as_bool(key, value) else ["--no-" + option[2:]]
    if action.nargs == 0:  # store_true: it can only be turned on
        return [option] if _as_bool(key, value) else []
    if action.nargs == "?" and value is True:
        return [option]
    if isinstance(value, list) and (action.nargs in ("+", "*") or isinstance(action.nargs, int)):
        return [option, *(_text(v) for v in value)]
    # `--flag=value`: a value starting with '-' or holding '.' stays a value.
    return [f"{option}={_text(value)}"]


def _parse(words: list[str]) -> argparse.Namespace:
    parser = _get()
    with _lock:  # FlexibleArgumentParser keeps a little state while it parses
        ns: argparse.Namespace = parser.parse_args(words)
    return ns


def engine_args(settings: Mapping[str, Any]) -> Any:
    """`AsyncEngineArgs` for these settings (vLLM's names), through vLLM's parser and its
    own checks (`__post_init__`); VllmArgError names the setting vLLM refused."""
    from vllm.engine.arg_utils import AsyncEngineArgs

    words: list[str] = []
    for key, value in settings.items():
        words += flag_words(key, value)
    try:
        ns = _parse(words)
    except VllmArgError as e:
        raise VllmArgError(_key_of(e.message, settings), e.message) from None
    try:
        return AsyncEngineArgs.from_cli_args(ns)
    except (ValueError, TypeError) as e:
        raise VllmArgError("", str(e)) from None


def _key_of(message: str, settings: Mapping[str, Any]) -> str:
    """The setting a parser message names (`argument --max-lora-rank: ...`)."""
    for key in settings:
        if f"--{key.replace('_', '-')}" in message:
            return key
    return ""


def problems(model: str, settings: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, message) for each setting vLLM's parser refuses; then, when each is fine on
    its own, ("", message) if vLLM's own cross-checks refuse them together. Loads no model
    and starts nothing."""
    found: list[tuple[str, str]] = []
    for key, value in settings.items():
        try:
            _parse(flag_words(key, value))
        except VllmArgError as e:
            found.append((key, e.message))
    if not found:
        try:
            engine_args({"model": model, **settings} if model else dict(settings))
        except VllmArgError as e:
            found.append((e.key, e.message))
    return found


def architectures() -> frozenset[str]:
    """Model architectures (config.json `architectures`) vLLM's registry can load."""
    from vllm.model_executor.models import ModelRegistry

    return frozenset(ModelRegistry.get_supported_archs())
