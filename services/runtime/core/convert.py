"""Conversions between the runtime's protobuf messages and engine types (no I/O)."""

from __future__ import annotations

from basalt.pb import runtime_pb2
from services.runtime.core.engine import FinishReason, GenerateChunk, GenerateInput, SamplingParams
from services.runtime.core.errors import InvalidRequest

_FINISH = {
    FinishReason.STOP: runtime_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: runtime_pb2.FINISH_REASON_LENGTH,
    FinishReason.ABORT: runtime_pb2.FINISH_REASON_ABORT,
}


def sampling_from_proto(msg: runtime_pb2.SamplingParams) -> SamplingParams:
    params = SamplingParams(
        max_tokens=msg.max_tokens or 16,
        temperature=msg.temperature if msg.HasField("temperature") else 1.0,
        top_p=msg.top_p if msg.HasField("top_p") else 1.0,
        top_k=msg.top_k if msg.HasField("top_k") else 0,
        seed=msg.seed if msg.HasField("seed") else None,
        stop=list(msg.stop),
        stop_token_ids=list(msg.stop_token_ids),
        ignore_eos=msg.ignore_eos,
    )
    params.validate()
    return params


def generate_input_from_proto(msg: runtime_pb2.GenerateRequest, fallback_id: str) -> GenerateInput:
    """Validate a GenerateRequest; raises InvalidRequest with a message a user can act on.
    `fallback_id` names a request that came without an id (the adapter draws it)."""
    if not msg.prompt_token_ids:
        raise InvalidRequest("prompt_token_ids is empty: send at least one token id")
    return GenerateInput(
        request_id=msg.request_id or fallback_id,
        prompt_token_ids=list(msg.prompt_token_ids),
        sampling=sampling_from_proto(msg.sampling),
        lora_name=msg.lora_name or None,
    )


def chunk_to_proto(chunk: GenerateChunk) -> runtime_pb2.GenerateResponse:
    out = runtime_pb2.GenerateResponse(token_ids=chunk.token_ids, text=chunk.text)
    if chunk.finish_reason is not None:
        out.finish_reason = _FINISH[chunk.finish_reason]
    if chunk.usage is not None:
        out.usage.prompt_tokens = chunk.usage.prompt_tokens
        out.usage.completion_tokens = chunk.usage.completion_tokens
        out.usage.cached_prompt_tokens = chunk.usage.cached_prompt_tokens
    return out
