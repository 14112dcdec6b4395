"""vLLM's KV events, finish reasons and sampling settings as ours; request checks (pure, no I/O).

Plain functions of the vllm engine (engines/vllm.py); vLLM itself is not imported here.
"""

from __future__ import annotations

from typing import Any

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from services.runtime.core.engine import FinishReason, GenerateInput, SamplingParams
from services.runtime.core.errors import InvalidRequest, PromptTooLong

_U64 = (1 << 64) - 1


def block_hash_to_int(h: bytes | int) -> int:
    """vLLM publishes 64-bit ints by default; a bytes hash is folded the way vLLM folds it."""
    if isinstance(h, bytes):
        return int.from_bytes(h, "big") & _U64
    return h & _U64


def convert_event(e: Any) -> KvEvent | None:
    """One vLLM KV event as ours; None for an event kind we do not know."""
    kind = type(e).__name__
    if kind == "BlockStored":
        parent = e.parent_block_hash
        return BlockStored(
            block_hashes=[block_hash_to_int(h) for h in e.block_hashes],
            parent_block_hash=None if parent is None else block_hash_to_int(parent),
            token_ids=list(e.token_ids),
            block_size=e.block_size,
            lora_name=e.lora_name or None,
        )
    if kind == "BlockRemoved":
        return BlockRemoved(block_hashes=[block_hash_to_int(h) for h in e.block_hashes])
    if kind == "AllBlocksCleared":
        return AllBlocksCleared()
    return None


def convert_batch(events: list[Any]) -> list[KvEvent]:
    return [c for c in (convert_event(e) for e in events) if c is not None]


def missing_batches(last_seq: int | None, seq: int) -> int:
    """How many publisher batches were lost between `last_seq` and `seq` (0 when in order)."""
    if last_seq is None or seq <= last_seq:
        return 0  # first batch seen, or the publisher restarted its count
    return seq - last_seq - 1


def finish_reason(reason: str | None) -> FinishReason:
    if reason == "length":
        return FinishReason.LENGTH
    if reason == "stop":
        return FinishReason.STOP
    return FinishReason.ABORT  # "abort", "error", or anything newer


def check_input(req: GenerateInput, vocab_size: int, max_model_len: int) -> None:
    """Raise InvalidRequest / PromptTooLong for a request vLLM must not see."""
    req.sampling.validate()
    ids = req.prompt_token_ids
    if not ids:
        raise InvalidRequest("the prompt is empty")
    if len(ids) + req.sampling.max_tokens > max_model_len:
        raise PromptTooLong(len(ids), req.sampling.max_tokens, max_model_len)
    for what, tokens in (("token id", ids), ("stop token id", req.sampling.stop_token_ids)):
        bad = next((t for t in tokens if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequest(f"{what} {bad} is outside the vocabulary [0, {vocab_size})")


def vllm_sampling_kwargs(p: SamplingParams) -> dict[str, Any]:
    """Keyword arguments for vLLM's SamplingParams (output_kind is added by the caller)."""
    return {
        "n": 1,
        "max_tokens": p.max_tokens,
        "temperature": p.temperature,
        "top_p": p.top_p,
        "top_k": p.top_k,  # 0 is "off" in vLLM too
        "seed": p.seed,
        "stop": list(p.stop) or None,
        "stop_token_ids": list(p.stop_token_ids) or None,
        "ignore_eos": p.ignore_eos,
        "detokenize": True,
    }
