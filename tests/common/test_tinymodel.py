"""The tiny test model: complete, loadable, deterministic, and rebuilt when half-written."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from basalt_tools.tinymodel import LORA_NAME, is_complete, make_tiny_model


def test_model_has_tokenizer_weights_and_lora(tiny_model: Path) -> None:
    assert is_complete(tiny_model)
    config = json.loads((tiny_model / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    assert config["hidden_size"] // config["num_attention_heads"] >= 32  # vLLM CPU needs it
    tok = json.loads((tiny_model / "tokenizer.json").read_text())
    vocab = len(tok["model"]["vocab"])
    assert 900 <= vocab <= 1000
    assert config["vocab_size"] == vocab


def test_transformers_loads_and_generates(tiny_model: Path) -> None:
    import torch
    from transformers import AutoTokenizer, LlamaForCausalLM

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    model = LlamaForCausalLM.from_pretrained(tiny_model, local_files_only=True)
    ids = tok("The cat sees the house.", return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(ids, max_new_tokens=4, min_new_tokens=4, do_sample=False)
    assert out.shape == (1, ids.shape[1] + 4)


def test_lora_tensors_match_the_model(tiny_model: Path) -> None:
    from safetensors import safe_open

    lora = tiny_model / "lora" / LORA_NAME
    adapter = json.loads((lora / "adapter_config.json").read_text())
    assert adapter["peft_type"] == "LORA"
    assert (adapter["r"], adapter["lora_alpha"]) == (8, 16)
    assert sorted(adapter["target_modules"]) == ["q_proj", "v_proj"]
    config = json.loads((tiny_model / "config.json").read_text())
    hidden, layers = config["hidden_size"], config["num_hidden_layers"]
    with safe_open(str(lora / "adapter_model.safetensors"), "pt") as f:
        names = set(f.keys())
        assert len(names) == layers * 2 * 2
        for layer in range(layers):
            for proj in ("q_proj", "v_proj"):
                prefix = f"base_model.model.model.layers.{layer}.self_attn.{proj}"
                a = f.get_tensor(f"{prefix}.lora_A.weight")
                b = f.get_tensor(f"{prefix}.lora_B.weight")
                assert tuple(a.shape) == (8, hidden)
                assert tuple(b.shape) == (config["head_dim"] * 2, 8)
                assert b.abs().sum() > 0  # a zero B would make the adapter a no-op


def test_second_call_returns_without_rewriting(tiny_model: Path) -> None:
    before = {p: p.stat().st_mtime_ns for p in tiny_model.rglob("*") if p.is_file()}
    assert make_tiny_model(tiny_model) == tiny_model
    after = {p: p.stat().st_mtime_ns for p in tiny_model.rglob("*") if p.is_file()}
    assert before == after


@pytest.mark.timeout(120)
def test_half_written_model_is_rebuilt_identically(tiny_model: Path, tmp_path: Path) -> None:
    out = tmp_path / "tiny"
    out.mkdir()
    (out / "config.json").write_text("{}")  # a crashed earlier build
    assert not is_complete(out)
    make_tiny_model(out)
    assert is_complete(out)
    for name in ("tokenizer.json", "config.json", "model.safetensors"):
        assert (out / name).read_bytes() == (tiny_model / name).read_bytes(), name
    assert [p.name for p in tmp_path.iterdir()] == ["tiny"]  # no temp folder left behind
