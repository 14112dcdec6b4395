"""The vllm engine's pure conversions and checks (no vLLM needed: its event types are stood in
for by classes of the same names, which is all `convert_event` looks at)."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from basalt.kvevents import AllBlocksCleared as OurCleared
from basalt.kvevents import BlockRemoved as OurRemoved
from basalt.kvevents import BlockStored as OurStored
from services.runtime.core.engine import FinishReason, GenerateInput, SamplingParams
from services.runtime.core.errors import InvalidRequest, PromptTooLong
from services.runtime.engines.vllm_convert import (
    block_hash_to_int,
    check_input,
    convert_batch,
    convert_event,
    finish_reason,
    missing_batches,
    vllm_sampling_kwargs,
)


@dataclass
class BlockStored:
    block_hashes: list[int | bytes]
    parent_block_hash: int | bytes | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None


@dataclass
class BlockRemoved:
    block_hashes: list[int | bytes]


class AllBlocksCleared:
    pass


class SomethingNewer:
    pass


def test_block_hashes_fold_to_64_bits() -> None:
    assert block_hash_to_int(5) == 5
    assert block_hash_to_int(-1) == 2**64 - 1
    assert block_hash_to_int(b"\x01" + b"\x00" * 8) == 0  # only the low 64 bits are kept
    assert block_hash_to_int(b"\x00\x02") == 2


def test_events_convert_and_unknown_kinds_are_dropped() -> None:
    stored = BlockStored([1, b"\x02"], None, list(range(8)), 4, "")
    assert convert_event(stored) == OurStored([1, 2], None, list(range(8)), 4, None)
    child = BlockStored([3], b"\x02", [9, 9, 9, 9], 4, "adapter")
    assert convert_event(child) == OurStored([3], 2, [9, 9, 9, 9], 4, "adapter")
    assert convert_event(BlockRemoved([1])) == OurRemoved([1])
    assert convert_event(AllBlocksCleared()) == OurCleared()
    assert convert_batch([SomethingNewer(), BlockRemoved([7])]) == [OurRemoved([7])]


def test_missing_batches_counts_gaps_only() -> None:
    assert missing_batches(None, 5) == 0
    assert missing_batches(4, 5) == 0
    assert missing_batches(4, 8) == 3
    assert missing_batches(9, 2) == 0  # the publisher restarted its count


def test_finish_reasons() -> None:
    assert finish_reason("length") is FinishReason.LENGTH
    assert finish_reason("stop") is FinishReason.STOP
    assert finish_reason("abort") is FinishReason.ABORT
    assert finish_reason(None) is FinishReason.ABORT


def _req(ids: list[int], **sampling: object) -> GenerateInput:
    return GenerateInput("r", ids, SamplingParams(**sampling))  # type: ignore[arg-type]


def test_check_input_refuses_what_vllm_must_not_see() -> None:
    check_input(_req([1, 2, 3], max_tokens=5), vocab_size=10, max_model_len=8)
    with pytest.raises(InvalidRequest, match="empty"):
        check_input(_req([]), vocab_size=10, max_model_len=8)
    with pytest.raises(PromptTooLong):
        check_input(_req([1, 2, 3], max_tokens=6), vocab_size=10, max_model_len=8)
    with pytest.raises(InvalidRequest, match="token id 10"):
        check_input(_req([1, 10]), vocab_size=10, max_model_len=64)
    with pytest.raises(InvalidRequest, match="stop token id -1"):
        check_input(_req([1], stop_token_ids=[-1]), vocab_size=10, max_model_len=64)
    with pytest.raises(InvalidRequest, match="max_tokens"):
        check_input(_req([1], max_tokens=0), vocab_size=10, max_model_len=64)


def test_sampling_kwargs_map_empty_lists_to_none() -> None:
    kw = vllm_sampling_kwargs(SamplingParams(max_tokens=3, top_k=0, seed=7))
    assert kw["max_tokens"] == 3 and kw["top_k"] == 0 and kw["seed"] == 7
    assert kw["stop"] is None and kw["stop_token_ids"] is None and kw["n"] == 1
    kw = vllm_sampling_kwargs(SamplingParams(stop=["x"], stop_token_ids=[2]))
    assert kw["stop"] == ["x"] and kw["stop_token_ids"] == [2]
