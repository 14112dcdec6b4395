"""Engine args: the stored-text codec, which key is a runtime flag and which the engine's own
setting, the keys basalt owns, and how they reach the runtime and each engine's arguments
(no engine imported, no I/O beyond a temporary file)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from basalt import deployfile
from basalt.config import parse
from basalt.engine_settings import (
    OWNED_ENGINE_KEYS,
    PROVIDER_KEYS,
    RUNTIME_KEYS,
    decode_args,
    decode_value,
    encode_args,
    encode_value,
    key_problem,
    parse_engine_settings,
    runtime_flag,
    split,
)
from basalt.ids import ReplicaId
from services.mcm.core.errors import InvalidLaunchRequest
from services.mcm.core.inventory import DeploymentId
from services.mcm.core.provider import LaunchRequest, runtime_args
from services.runtime.config import RuntimeSettings
from services.runtime.engines.trtllm import TrtllmConfig, llm_settings
from services.runtime.engines.vllm import VllmConfig, vllm_settings
from services.runtime.factory import make_engine

# -- the codec ------------------------------------------------------------------------------


@pytest.mark.parametrize("value, text", [
    (1024, "1024"), (0.5, "0.5"), (True, "true"), (None, "null"), ("auto", "auto"),
    ([1, 2], "[1,2]"),
    ({"num_speculative_tokens": 3, "method": "ngram"},
     '{"method":"ngram","num_speculative_tokens":3}'),
])
def test_values_are_stored_as_json_text_and_strings_as_themselves(value: Any, text: str) -> None:
    assert encode_value(value) == text
    assert decode_value(text) == value


@pytest.mark.parametrize("text, value", [
    ("1024", 1024), ("0.5", 0.5), ("auto", "auto"), ("fp8", "fp8"), ("", ""),
    ("/models/x", "/models/x"), ("01", "01"),
])
def test_records_written_before_typed_values_read_right(text: str, value: Any) -> None:
    assert decode_value(text) == value


def test_args_are_stored_under_underscore_keys_and_read_back_typed() -> None:
    stored = encode_args({"max-model-len": 1024, "enforce_eager": True,
                          "speculative_config": {"method": "ngram"}})
    assert stored == {"max_model_len": "1024", "enforce_eager": "true",
                      "speculative_config": '{"method":"ngram"}'}
    assert decode_args(stored) == {"max_model_len": 1024, "enforce_eager": True,
                                   "speculative_config": {"method": "ngram"}}
    assert decode_args({"seed": 3}) == {"seed": 3}  # values, not text: kept


# -- deployment files -----------------------------------------------------------------------


def test_a_deployment_file_takes_yaml_natural_engine_args(tmp_path: Path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("deployments:\n  - id: d\n    model: m\n    engine_args:\n"
                 "      max-model-len: 1024\n      enforce_eager: true\n"
                 "      speculative_config: {method: ngram, num_speculative_tokens: 3}\n"
                 "      quantization: fp8\n")
    spec = deployfile.load(f, base_dir=tmp_path).deployments[0].to_record().spec
    assert dict(spec.engine_args) == {
        "max_model_len": "1024", "enforce_eager": "true", "quantization": "fp8",
        "speculative_config": '{"method":"ngram","num_speculative_tokens":3}'}


def test_one_setting_spelled_two_ways_is_refused() -> None:
    with pytest.raises(ValidationError, match="one setting"):
        deployfile.Deployment(id="d", model="m", engine_args={"max-model-len": 1,
                                                               "max_model_len": 2})


# -- where each key goes --------------------------------------------------------------------


def test_runtime_settings_stay_runtime_flags_and_the_rest_pass_through() -> None:
    parts = split({"max-model-len": 1024, "heartbeat_interval": 0.5, "max_lora_rank": 16,
                   "enforce_eager": True})
    assert parts.runtime == {"max_model_len": 1024, "heartbeat_interval": 0.5}
    assert parts.engine == {"max_lora_rank": 16, "enforce_eager": True}
    assert runtime_flag("warm_weights", False) == ["--no-warm-weights"]
    assert runtime_flag("sim_time_scale", 0.01) == ["--sim-time-scale", "0.01"]


def test_the_runtime_keys_and_the_provider_keys_are_every_runtime_setting() -> None:
    fields = set(RuntimeSettings.model_fields)
    assert RUNTIME_KEYS | PROVIDER_KEYS == fields, (RUNTIME_KEYS | PROVIDER_KEYS) ^ fields
    assert not RUNTIME_KEYS & PROVIDER_KEYS


def _request(engine: str, engine_args: dict[str, Any]) -> LaunchRequest:
    return LaunchRequest(
        replica_id=ReplicaId("d-1"), deployment_id=DeploymentId("d"), owner="mcm-1",
        engine=engine, model_path="/models/m", model_name="m",
        nats_url="nats://127.0.0.1:4222", cluster="local", engine_args=engine_args)


def test_a_stored_record_becomes_runtime_flags_and_one_engine_settings_flag() -> None:
    dep = deployfile.Deployment(id="d", model="m", engine_args={
        "max-model-len": 512, "sim_time_scale": 0.5, "drain_timeout": "1",
        "max_lora_rank": 16, "enforce_eager": True,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3}})
    stored = dict(dep.to_record().spec.engine_args)  # what the reconciler hands the provider
    args = runtime_args(_request("vllm", stored))
    flag = args.index("--engine-settings-json")
    assert json.loads(args[flag + 1]) == {
        "max_lora_rank": 16, "enforce_eager": True,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3}}
    s = parse(RuntimeSettings, args, "test")
    assert (s.max_model_len, s.sim_time_scale, s.drain_timeout) == (512, 0.5, 1.0)
    assert s.engine_settings() == json.loads(args[flag + 1])


def test_runtime_settings_alone_add_no_engine_settings_flag() -> None:
    args = runtime_args(_request("sim", {"heartbeat_interval": "0.5", "sim_num_blocks": "256"}))
    assert "--engine-settings-json" not in args
    assert args[-4:] == ["--heartbeat-interval", "0.5", "--sim-num-blocks", "256"]


# -- what basalt owns -----------------------------------------------------------------------


@pytest.mark.parametrize("key", ["model", "served_model_name", "served-model-name",
                                 "kv_events_config", "enable_prefix_caching", "token",
                                 "grpc_host", "grpc-insecure", "engine_settings_json",
                                 "disable_log_stats", "tokenizer", "trust_remote_code",
                                 "Max_Model_Len", "--seed"])
def test_keys_basalt_sets_are_refused_with_a_reason(key: str) -> None:
    assert key_problem(key)
    with pytest.raises(InvalidLaunchRequest) as e:
        runtime_args(_request("vllm", {key: "x"}))
    assert e.value.field_name == "engine_args"


def test_every_owned_engine_key_says_why() -> None:
    assert all(len(reason) > 20 for reason in OWNED_ENGINE_KEYS.values())
    for key in ("max_lora_rank", "enforce_eager", "tensor_parallel_size", "max_model_len"):
        assert key_problem(key) is None


@pytest.mark.parametrize("text, match", [
    ('{"kv_events_config": {}}', "KV events"),
    ('{"max_model_len": 5}', "--max-model-len"),
    ("[1]", "JSON object"),
    ("{", "not JSON"),
])
def test_a_runtime_started_by_hand_refuses_bad_engine_settings(text: str, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        parse_engine_settings(text)
    with pytest.raises(ValidationError, match="engine_settings_json"):
        RuntimeSettings(engine_settings_json=text)


@pytest.mark.parametrize("engine", ["sim", "python"])
def test_engines_without_settings_of_their_own_refuse_them(engine: str) -> None:
    s = RuntimeSettings(engine=engine, model="/m", engine_settings_json='{"seed": 1}')
    with pytest.raises(ValueError, match="takes no engine settings"):
        make_engine(s, tokenizer=None)


# -- each engine's arguments ----------------------------------------------------------------


def test_vllm_gets_the_pass_through_between_basalts_defaults_and_what_basalt_owns() -> None:
    c = VllmConfig(model="/models/m", served_model_name="m", max_model_len=512,
                   engine_settings={"max_lora_rank": 16, "max_loras": 4, "seed": 7})
    s = vllm_settings(c, "tcp://127.0.0.1:9")
    assert (s["max_lora_rank"], s["max_loras"], s["seed"], s["enable_lora"]) == (16, 4, 7, True)
    assert "enforce_eager" not in s  # no CPU-friendly default of basalt's own
    assert s["enable_prefix_caching"] is True and s["disable_log_stats"] is True
    assert (s["model"], s["served_model_name"], s["max_model_len"]) == ("/models/m", "m", 512)
    assert s["kv_events_config"]["endpoint"] == "tcp://127.0.0.1:9"


def test_the_runtime_gives_vllm_its_engine_settings() -> None:
    s = RuntimeSettings(engine="vllm", model="/m", max_model_len=256,
                        engine_settings_json='{"enforce_eager": true}')
    engine: Any = make_engine(s, tokenizer=None)
    assert engine.config.engine_settings == {"enforce_eager": True}
    assert engine.config.max_model_len == 256


def test_trtllm_gets_the_pass_through_with_block_reuse_and_events_kept_on() -> None:
    c = TrtllmConfig(max_model_len=2048, max_num_seqs=8, max_loras=2, extra_llm_kwargs={
        "backend": "pytorch", "tensor_parallel_size": 2,
        "kv_cache_config": {"host_cache_size": 1 << 30, "enable_block_reuse": False},
        "lora_config": {"max_lora_rank": 16}})
    s = llm_settings("/models/m", c)
    assert (s["backend"], s["tensor_parallel_size"], s["model"]) == ("pytorch", 2, "/models/m")
    assert (s["max_seq_len"], s["max_batch_size"]) == (2048, 8)
    assert s["kv_cache_config"] == {"host_cache_size": 1 << 30, "enable_block_reuse": True,
                                    "event_buffer_max_size": c.event_buffer_max_size}
    assert s["lora_config"] == {"max_lora_rank": 16, "max_loras": 2, "max_cpu_loras": 2}
