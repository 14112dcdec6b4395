"""A deployment's engine args: how they are stored, which are runtime flags and which the
engine's own settings, and which keys basalt owns (pure: no I/O, no engine imported).

A deployment writes `engine_args` as YAML or JSON would have them: `max_model_len: 1024`,
`enforce_eager: true`, `speculative_config: {method: ngram, num_speculative_tokens: 3}`,
keys with dashes or underscores. They travel in `DeploymentSpec.engine_args`, a
`map<string, string>`, so each value is stored as text (`encode_value`) and read back with
`decode_value`. They reach a replica in two ways (`split`):

- a key that is one of the runtime's own settings (`RUNTIME_KEYS`: block_size,
  max_model_len, heartbeat_interval, the simulator's sim_*, ...) becomes that runtime flag,
  `--max-model-len 1024`, as it always has;
- every other key is the engine's own setting, passed through untouched: all of them go to
  the runtime as ONE flag, `--engine-settings-json '{"enforce_eager": true, ...}'`, and the
  runtime hands them to the engine (vLLM's `AsyncEngineArgs`, TensorRT-LLM's `LLM(...)`),
  under the engine's own names, checked by the engine's own parser (`basalt.engine_check`).

Keys basalt sets itself are refused (`key_problem`), each with its reason:
`PROVIDER_KEYS` are the runtime flags the control plane sets (where the replica listens,
its credentials, what it serves); `OWNED_ENGINE_KEYS` are engine settings basalt's runtime
depends on (the served model name, KV events, prefix caching, its stats, the tokenizer,
one engine per replica), and trust_remote_code, which would run a model folder's code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "ENGINE_SETTINGS_FLAG", "OWNED_ENGINE_KEYS", "PROVIDER_KEYS", "RUNTIME_KEYS", "SplitArgs",
    "decode_args", "decode_value", "encode_args", "encode_value", "engine_settings_text",
    "key_problem", "normal_key", "parse_engine_settings", "runtime_flag", "split",
]

# The runtime flag that carries every engine pass-through setting, as one JSON object.
ENGINE_SETTINGS_FLAG = "engine-settings-json"

# RuntimeSettings fields a deployment may set (services/runtime/config.py; a test keeps the
# two in step): how big the engine is, how often the replica reports, the simulator's knobs.
RUNTIME_KEYS = frozenset({
    "block_size", "max_model_len", "max_num_seqs", "gpu_memory_utilization", "kv_cache_bytes",
    "sim_num_blocks", "sim_time_scale", "sim_seed", "heartbeat_interval",
    "load_report_interval", "kv_batch_interval", "drain_timeout", "warm_weights",
})

# RuntimeSettings fields the control plane sets itself: what the replica serves, for whom,
# where it listens and how it proves itself. A deployment may not open the runtime's port
# to the world, turn its credentials off or widen what it may read.
PROVIDER_KEYS = frozenset({
    "engine", "model", "model_name", "deployment", "replica_id", "owner", "region", "zone",
    "cluster", "nats_url", "ready_file", "lora_modules", "grpc_host", "grpc_port",
    "grpc_insecure", "advertise_host", "metrics_host", "metrics_port", "token", "nats_creds",
    "nats_tls_ca", "nats_tls_cert", "nats_tls_key", "nats_insecure", "lora_root", "log_level",
    "weights_dir", ENGINE_SETTINGS_FLAG.replace("-", "_"),
})

_TOKENIZER = ("the router tokenizes with the model's own tokenizer and sends token ids; the "
              "engine must use that same tokenizer")
# Engine settings (vLLM's and TensorRT-LLM's names) the runtime sets and depends on, or that
# would run code from outside the roots the control plane checks.
OWNED_ENGINE_KEYS: Mapping[str, str] = {
    "served_model_name": "basalt serves the model under the deployment's model name",
    "kv_events_config": ("the runtime subscribes to the engine's KV events (KV-aware routing "
                         "reads them) and sets this itself"),
    "enable_prefix_caching": "KV-aware routing needs prefix caching; basalt always turns it on",
    "disable_log_stats": ("the runtime reads the engine's scheduler stats for its load "
                          "reports; basalt sets this"),
    "kv_cache_memory_bytes": "use kv_cache_bytes (the runtime's setting, given to the engine)",
    "max_seq_len": "use max_model_len (the runtime's setting, given to the engine)",
    "max_batch_size": "use max_num_seqs (the runtime's setting, given to the engine)",
    "tokenizer": _TOKENIZER,
    "skip_tokenizer_init": _TOKENIZER,
    "trust_remote_code": ("runs Python code from the model folder inside the replica; serve "
                          "custom code with the python engine, whose code roots the control "
                          "plane checks"),
    "data_parallel_size": ("one replica is one engine: scale out with replicas "
                           "(tensor_parallel_size splits one engine over devices)"),
}

_KEY = re.compile(r"^[a-z][a-z0-9_-]*$")


def normal_key(key: str) -> str:
    """`max-model-len` and `max_model_len` are one key: the underscore form."""
    return key.replace("-", "_")


def key_problem(key: str) -> str | None:
    """Why `key` may not be an engine arg of a deployment (None: it may)."""
    if not _KEY.match(key):
        return "keys are lower-case flag names"
    name = normal_key(key)
    if name in PROVIDER_KEYS:
        return "set by the provider, not an arg"
    return OWNED_ENGINE_KEYS.get(name)


# -- stored text ---------------------------------------------------------------------------


def encode_value(value: Any) -> str:
    """The text stored for one value: a string as itself (records stay readable, and ones
    written before typed values read alike), anything else as compact JSON."""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def decode_value(text: str) -> Any:
    """The value stored as `text`: its JSON reading, else the text itself ("auto"). A string
    that is itself JSON ("1024", "true") reads as the number or bool: the same value on a
    command line, which is where every engine arg ends up."""
    try:
        return json.loads(text)
    except ValueError:
        return text


def encode_args(args: Mapping[str, Any]) -> dict[str, str]:
    """A deployment's engine args as `DeploymentSpec.engine_args` stores them."""
    return {normal_key(k): encode_value(v) for k, v in args.items()}


def decode_args(stored: Mapping[str, Any]) -> dict[str, Any]:
    """Engine args read back: stored text decoded, values that are not text kept as given."""
    return {normal_key(k): decode_value(v) if isinstance(v, str) else v
            for k, v in stored.items()}


# -- runtime flags vs. engine settings -----------------------------------------------------


@dataclass(slots=True, frozen=True)
class SplitArgs:
    """A deployment's engine args, by where they go."""

    runtime: dict[str, Any] = field(default_factory=dict)  # RuntimeSettings fields
    engine: dict[str, Any] = field(default_factory=dict)  # the engine's own settings


def split(args: Mapping[str, Any]) -> SplitArgs:
    """Runtime settings apart from engine pass-through settings (keys already decoded)."""
    out = SplitArgs()
    for key, value in args.items():
        name = normal_key(key)
        (out.runtime if name in RUNTIME_KEYS else out.engine)[name] = value
    return out


def runtime_flag(key: str, value: Any) -> list[str]:
    """One runtime setting as command-line words: `--max-model-len 1024`; a bool is the
    flag or its `--no-` form (the runtime's flags are implicit booleans); None: nothing."""
    flag = normal_key(key).replace("_", "-")
    if value is None:
        return []
    if isinstance(value, bool):
        return [f"--{flag}" if value else f"--no-{flag}"]
    return [f"--{flag}", encode_value(value)]


def engine_settings_text(settings: Mapping[str, Any]) -> str:
    """The `--engine-settings-json` value: one JSON object, keys sorted ("" when empty)."""
    if not settings:
        return ""
    return json.dumps(dict(settings), separators=(",", ":"), sort_keys=True)


def parse_engine_settings(text: str) -> dict[str, Any]:
    """`--engine-settings-json` read back; ValueError naming what is wrong: not a JSON
    object, or a key basalt sets itself (a runtime started by hand is checked too)."""
    if not text.strip():
        return {}
    try:
        doc = json.loads(text)
    except ValueError as e:
        raise ValueError(f"not JSON: {e}") from None
    if not isinstance(doc, dict):
        # ValueError, not TypeError: pydantic reports only ValueError as the flag's error.
        raise ValueError(  # noqa: TRY004
            f"must be a JSON object of engine settings, got {type(doc).__name__}")
    out: dict[str, Any] = {}
    for key, value in doc.items():
        if problem := key_problem(str(key)):
            raise ValueError(f"{key}: {problem}")
        if normal_key(key) in RUNTIME_KEYS:
            raise ValueError(f"{key}: a runtime setting: give it as --{key.replace('_', '-')}")
        out[normal_key(key)] = value
    return out
