"""`basalt.engine_check.problems`: what the control plane refuses before it writes a
deployment. The model-folder and key checks need no engine; the vLLM ones run vLLM's own
parser and model registry (the real CPU build, marked `vllm`)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from basalt.engine_check import Problem, problems
from tests.service_process import REPO

# -- no engine needed -----------------------------------------------------------------------


def test_a_missing_model_folder_is_refused(tmp_path: Path) -> None:
    for engine in ("vllm", "trtllm", "python", "sim"):
        assert problems(engine, str(tmp_path / "nope"), {}) == [
            Problem("model_path", f"{str(tmp_path / 'nope')!r} is not a folder here")]


def test_a_folder_without_a_readable_config_json_is_no_model(tmp_path: Path) -> None:
    [p] = problems("trtllm", str(tmp_path), {})
    assert p.field == "model_path" and "no config.json" in p.message
    (tmp_path / "config.json").write_text("{not json")
    [p] = problems("trtllm", str(tmp_path), {})
    assert "not readable JSON" in p.message
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    [p] = problems("vllm", str(tmp_path), {})
    assert p.message == "config.json names no architectures"


def test_a_python_model_needs_its_model_py_where_config_yaml_says(tmp_path: Path) -> None:
    [p] = problems("python", str(tmp_path), {})
    assert "no model/model.py" in p.message
    (tmp_path / "config.yaml").write_text("model_module_dir: src\n")
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "model.py").write_text("class Model: ...\n")
    assert problems("python", str(tmp_path), {}) == []


def test_sim_takes_runtime_settings_only_and_no_model_path() -> None:
    assert problems("sim", "", {"sim-num-blocks": 256, "max_model_len": "512"}) == []
    [p] = problems("sim", "", {"enforce_eager": True})
    assert p.field == "engine_args.enforce_eager" and "not a setting of the sim engine" in p.message


def test_keys_basalt_owns_and_double_spellings_are_refused_before_anything_else() -> None:
    found = problems("vllm", "/nowhere", {"grpc-host": "0.0.0.0", "kv_events_config": {},
                                          "seed": 1, "se-ed": 2})
    assert [p.field for p in found] == ["engine_args.grpc-host", "engine_args.kv_events_config"]
    assert "provider" in found[0].message and "KV events" in found[1].message
    [p] = problems("vllm", "", {"max-lora-rank": 8, "max_lora_rank": 16})
    assert p.message == "given twice (also as max-lora-rank)"
    assert problems("nope", "", {}) == [
        Problem("engine", "'nope' is not an engine: one of vllm, trtllm, sim, python")]


@pytest.mark.skipif(__import__("importlib").util.find_spec("tensorrt_llm") is not None,
                    reason="TensorRT-LLM is installed here")
def test_trtllm_settings_unchecked_without_tensorrt_llm_is_a_warning_not_a_refusal() -> None:
    [p] = problems("trtllm", "", {"backend": "pytorch"})
    assert p.warning and p.field == "engine_args" and "TensorRT-LLM is not importable" in p.message


def test_without_vllm_the_settings_are_not_checked_and_it_says_so() -> None:
    code = ("import sys; sys.modules['vllm'] = None\n"
            "from basalt.engine_check import problems\n"
            "print(repr(problems('vllm', '', {'max_lora_rnk': 1})))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, timeout=60, check=True).stdout
    assert "warning=True" in out and "vLLM is not importable here" in out


# -- vLLM's own parser and registry (the real CPU build) ------------------------------------


vllm = pytest.mark.vllm


@vllm
def test_a_good_vllm_deployment_has_no_problems(tiny_model: Path) -> None:
    pytest.importorskip("vllm")
    assert problems("vllm", str(tiny_model), {
        "max_lora_rank": 16, "enforce_eager": True, "max-num-batched-tokens": "2k", "seed": 7,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 3},
        "max_model_len": 1024, "tensor_parallel_size": 1, "enable_lora": False}) == []


@vllm
@pytest.mark.parametrize("args, field, message", [
    ({"max_lora_rnk": 16}, "engine_args.max_lora_rnk",
     "not a vLLM engine argument (did you mean max_lora_rank?)"),
    ({"max_lora": 16}, "engine_args.max_lora",
     "not a vLLM engine argument (did you mean max_loras?)"),
    ({"max_lora_rank": 7}, "engine_args.max_lora_rank",
     ("argument --max-lora-rank: invalid choice: 7 (choose from 1, 8, 16, 32, 64, 128, 256, "
      "320, 512)")),
    ({"max_num_batched_tokens": "lots"}, "engine_args.max_num_batched_tokens",
     "argument --max-num-batched-tokens: invalid human_readable_int value: 'lots'"),
    ({"enforce_eager": "yes"}, "engine_args.enforce_eager", "expects true or false, got 'yes'"),
    ({"no_enforce_eager": True}, "engine_args.no_enforce_eager",
     "write it as enforce_eager: false"),
])
def test_vllm_settings_are_checked_by_vllms_own_parser(
        tiny_model: Path, args: dict[str, object], field: str, message: str) -> None:
    pytest.importorskip("vllm")
    assert problems("vllm", str(tiny_model), args) == [Problem(field, message)]


@vllm
def test_a_bad_dtype_gets_vllms_choices(tiny_model: Path) -> None:
    pytest.importorskip("vllm")
    [p] = problems("vllm", str(tiny_model), {"dtype": "float99"})
    assert p.field == "engine_args.dtype" and "invalid choice: 'float99'" in p.message
    assert "'bfloat16'" in p.message


@vllm
def test_an_architecture_vllm_cannot_load_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("vllm")
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["NoSuchForCausalLM"]}))
    assert problems("vllm", str(tmp_path), {}) == [Problem(
        "model_path", "vLLM cannot load architecture NoSuchForCausalLM (not in its model registry)")]


@vllm
def test_later_checks_are_cheap_and_threads_may_call_at_once(tiny_model: Path) -> None:
    pytest.importorskip("vllm")
    problems("vllm", str(tiny_model), {"seed": 1})  # vLLM imported, its parser built
    args = {"max_lora_rank": 16, "enforce_eager": True, "max_num_batched_tokens": 1024}
    with ThreadPoolExecutor(4) as pool:
        t0 = time.perf_counter()
        found = list(pool.map(lambda _: problems("vllm", str(tiny_model), args), range(40)))
        took = time.perf_counter() - t0
    assert found == [[]] * 40
    assert took / 40 < 0.05, took  # about a millisecond each here


@vllm
def test_the_engines_vllm_serve_flags_parse_back_to_its_engine_args() -> None:
    pytest.importorskip("vllm")
    from basalt.vllm_args import engine_args
    from services.runtime.engines.vllm import VllmConfig, vllm_flags, vllm_settings

    c = VllmConfig(model="/m", served_model_name="m", engine_settings={
        "enforce_eager": True, "max_lora_rank": 32, "seed": 5,
        "speculative_config": {"method": "ngram", "num_speculative_tokens": 2}})
    flags = vllm_flags(c, "ipc:///tmp/kv")
    assert "--enforce-eager" in flags and "--max-lora-rank=32" in flags
    args = engine_args(vllm_settings(c, "ipc:///tmp/kv"))
    assert (args.max_lora_rank, args.seed, args.enforce_eager, args.max_loras) == (32, 5, True, 2)
    assert args.enable_prefix_caching and args.disable_log_stats
    assert args.kv_events_config.endpoint == "ipc:///tmp/kv"
    assert args.speculative_config == {"method": "ngram", "num_speculative_tokens": 2}
