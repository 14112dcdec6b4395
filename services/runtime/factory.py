"""Builds the engine a RuntimeSettings names, plus the tokenizer beside it (no network I/O)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from services.runtime.core.engine import Engine

from .config import EngineKind, RuntimeSettings


def _has_tokenizer(model: str) -> bool:
    return bool(model) and (Path(model) / "tokenizer.json").exists()


def make_tokenizer(settings: RuntimeSettings) -> Any:
    """The model's own tokenizer when it has one; a byte tokenizer otherwise."""
    from basalt.tokenizer import ByteTokenizer, load_tokenizer

    if _has_tokenizer(settings.model):
        return load_tokenizer(settings.model)
    return ByteTokenizer()


def model_name(settings: RuntimeSettings) -> str:
    if settings.model_name:
        return settings.model_name
    if settings.model:
        return Path(settings.model).resolve().name
    return "sim-model"


def make_engine(settings: RuntimeSettings, tokenizer: Any) -> Engine:
    """The engine `settings` names; --engine-settings-json goes to vllm and trtllm as their
    own arguments, and is refused by the sim and python engines, which have none."""
    name = model_name(settings)
    own = settings.engine_settings()
    if own and settings.engine in (EngineKind.SIM, EngineKind.PYTHON):
        raise ValueError(f"--engine-settings-json: the {settings.engine.value} engine takes no "
                         f"engine settings, got {sorted(own)}")
    if settings.engine is EngineKind.SIM:
        from services.runtime.engines.sim.engine import SimConfig, SimEngine

        sim_config = SimConfig(
            model_name=name,
            block_size=settings.block_size or 16,
            num_blocks=settings.sim_num_blocks,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            time_scale=settings.sim_time_scale,
            seed=settings.sim_seed,
            vocab_size=tokenizer.vocab_size,
        )
        return SimEngine(sim_config, decode=tokenizer.decode)
    if settings.engine is EngineKind.VLLM:
        from .engines.vllm import VllmConfig, VllmEngine

        vllm_config = VllmConfig(
            model=settings.model,
            served_model_name=name,
            max_model_len=settings.max_model_len,
            max_num_seqs=settings.max_num_seqs,
            gpu_memory_utilization=settings.gpu_memory_utilization,
            kv_cache_bytes=settings.kv_cache_bytes,
            engine_settings=own,
        )
        if settings.block_size:
            vllm_config.block_size = settings.block_size
        return VllmEngine(vllm_config)
    if settings.engine is EngineKind.PYTHON:
        from .engines.python_model import PythonModelEngine

        weights = Path(settings.weights_dir) if settings.weights_dir else None
        return PythonModelEngine(Path(settings.model), name, weights)
    from .engines.trtllm import TrtllmConfig, TrtllmEngine

    # Unverified: no GPU or TensorRT-LLM on the machines this was built on (see trtllm.py).
    trt = TrtllmConfig(
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        # The 0.2 default suits vLLM's CPU build; pass a share only when it was asked for.
        gpu_memory_fraction=(settings.gpu_memory_utilization
                             if "gpu_memory_utilization" in settings.model_fields_set else None),
        max_loras=max(len(settings.lora_modules), 2),
        extra_llm_kwargs=own,
    )
    if settings.block_size:
        trt.block_size = settings.block_size
    return TrtllmEngine(settings.model, name, trt)
