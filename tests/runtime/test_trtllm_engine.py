"""The trtllm engine's pure parts, and its refusal to start without TensorRT-LLM.

The adapter itself is unverified here (no GPU, TensorRT-LLM not installable); the event dicts
below follow TensorRT-LLM's KVCacheEventSerializer (tensorrt_llm/_utils.py).
"""

from __future__ import annotations

import importlib.util
import json

import pytest

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored
from services.runtime.core.engine import FinishReason, GenerateInput, SamplingParams
from services.runtime.core.errors import NotSupported
from services.runtime.engines.trtllm import (
    IterationLoad,
    KvEventConverter,
    TensorRtLlmMissing,
    TrtllmEngine,
    finish_reason,
    load_from_iteration_stats,
    sampling_kwargs,
)

BLOCK = 4


def block(block_hash: int, token_ids: list[int]) -> dict:
    return {
        "type": "stored_block",
        "block_hash": block_hash,
        "tokens": [{"type": "unique_token", "token_id": t, "token_extra_id": 0} for t in token_ids],
        "cache_level": 0,
        "priority": 35,
    }


def event(event_id: int, data: dict) -> dict:
    return {"event_id": event_id, "data": data, "window_size": 4096}


def stored(parent: int | None, *blocks: dict) -> dict:
    return event(1, {"type": "stored", "parent_hash": parent, "blocks": list(blocks)})


def removed(*hashes: int) -> dict:
    return event(2, {"type": "removed", "block_hashes": list(hashes)})


def test_stored_full_blocks_become_one_block_stored_event() -> None:
    conv = KvEventConverter(BLOCK)
    out = conv.convert(stored(None, block(11, [1, 2, 3, 4]), block(12, [5, 6, 7, 8])))
    assert out == [BlockStored([11, 12], None, [1, 2, 3, 4, 5, 6, 7, 8], BLOCK)]
    child = conv.convert(stored(12, block(13, [9, 10, 11, 12])))
    assert child == [BlockStored([13], 12, [9, 10, 11, 12], BLOCK)]


def test_partial_blocks_are_held_back_and_their_removal_is_dropped() -> None:
    conv = KvEventConverter(BLOCK)
    out = conv.convert(stored(None, block(21, [1, 2, 3, 4]), block(22, [5, 6])))
    assert out == [BlockStored([21], None, [1, 2, 3, 4], BLOCK)]
    assert conv.convert(stored(None, block(23, [7]))) == []  # nothing full to report
    assert conv.convert(removed(22, 21, 23)) == [BlockRemoved([21])]


def test_created_clears_everything_and_updated_changes_nothing() -> None:
    conv = KvEventConverter(BLOCK)
    created = event(0, {"type": "created", "num_blocks_per_cache_level": [1024, 0]})
    assert conv.convert(created) == [AllBlocksCleared()]
    diff = {"type": "event_diff", "new_value": 1, "old_value": 0}
    updated = {"type": "updated", "block_hash": 11, "cache_level": diff, "priority": diff}
    assert conv.convert(event(3, updated)) == []


def test_json_text_events_and_lora_ids_are_understood() -> None:
    conv = KvEventConverter(BLOCK, {7: "sql-adapter"}.get)
    data = {
        "type": "stored",
        "parent_hash": None,
        "lora_id": 7,
        "blocks": [block(31, [1, 2, 3, 4])],
    }
    out = conv.convert(json.dumps(event(4, data)))
    assert out == [BlockStored([31], None, [1, 2, 3, 4], BLOCK, lora_name="sql-adapter")]


def test_a_block_larger_than_the_block_size_is_reported_as_a_misconfiguration() -> None:
    with pytest.raises(ValueError, match="tokens_per_block"):
        KvEventConverter(BLOCK).convert(stored(None, block(41, [1, 2, 3, 4, 5])))


def test_iteration_stats_give_load_and_kv_usage() -> None:
    stat = {
        "numActiveRequests": 3,
        "numQueuedRequests": 2,
        "kvCacheStats": {"maxNumBlocks": 100, "usedNumBlocks": 40, "tokensPerBlock": 32},
    }
    assert load_from_iteration_stats(stat) == IterationLoad(3, 2, 40, 100)
    assert load_from_iteration_stats(json.dumps(stat)) == IterationLoad(3, 2, 40, 100)
    assert load_from_iteration_stats({"iter": 1}) is None


def test_sampling_maps_onto_tensorrt_llm_names() -> None:
    s = SamplingParams(max_tokens=9, temperature=0.7, top_p=0.9, top_k=20, seed=5, stop=["\n"])
    assert sampling_kwargs(s) == {
        "max_tokens": 9,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "seed": 5,
        "stop": ["\n"],
        "ignore_eos": False,
        "detokenize": True,
    }
    greedy = sampling_kwargs(SamplingParams(temperature=0.0))
    assert greedy["top_k"] == 1 and "temperature" not in greedy
    assert "top_k" not in sampling_kwargs(SamplingParams(top_k=0))  # 0 = off = TRT default


def test_finish_reasons() -> None:
    assert finish_reason("length", True) is FinishReason.LENGTH
    assert finish_reason("stop", True) is FinishReason.STOP
    assert finish_reason("cancelled", True) is FinishReason.ABORT
    assert finish_reason(None, False) is None


@pytest.mark.skipif(
    importlib.util.find_spec("tensorrt_llm") is not None, reason="TensorRT-LLM is installed"
)
async def test_starting_without_tensorrt_llm_names_the_missing_package() -> None:
    engine = TrtllmEngine("/models/llama", "llama")
    with pytest.raises(TensorRtLlmMissing, match="tensorrt_llm") as err:
        await engine.start()
    assert err.value.package == "tensorrt_llm" and "pip install tensorrt-llm" in str(err.value)
    with pytest.raises(NotSupported, match="not started"):
        async for _ in engine.generate(GenerateInput("r", [1, 2], SamplingParams())):
            pass
    await engine.shutdown()


def test_the_runtime_builds_a_trtllm_engine_from_its_settings() -> None:
    from basalt.tokenizer import ByteTokenizer
    from services.runtime.config import RuntimeSettings
    from services.runtime.factory import make_engine

    settings = RuntimeSettings(engine="trtllm", model="/models/x", max_model_len=4096,
                               lora_modules=["a=/l/a", "b=/l/b", "c=/l/c"])
    engine = make_engine(settings, ByteTokenizer())
    assert engine.kind == "trtllm"
    assert (engine.config.max_model_len, engine.config.max_loras) == (4096, 3)
    assert engine.config.gpu_memory_fraction is None  # vLLM-CPU's 0.2 default is not forced on GPUs
