"""KServe v2 / Triton request decoding and response building, shared by runtime and router (no I/O).

This module is the one import for both halves: requests are read in basalt.kserve.requests,
responses built in basalt.kserve.responses; every public name of either is re-exported here.

LLM models follow Triton's vLLM / TensorRT-LLM backend convention. Inputs: `text_input` (BYTES,
shape [1] or [1, 1]); optional `max_tokens`, `top_k`, `seed` / `random_seed` (any integer type),
`temperature`, `top_p` (FP16/32/64), `stream`, `exclude_input_in_output`, `ignore_eos` (BOOL),
`sampling_parameters` (BYTES, a JSON object, as the vLLM backend takes). Sampling fields
(max_tokens, temperature, top_p, top_k (-1 = off), seed, stop, stop_token_ids, ignore_eos,
lora_name) are also read from request `parameters`; input tensors win over `sampling_parameters`,
which wins over request parameters. Output: `text_output` (BYTES); the prompt text is prepended
unless `exclude_input_in_output` is true. ModelInfer returns the whole text (stream=true is
refused there); ModelStreamInfer sends one response per text delta unless the request sets
stream=false, and marks every response with `triton_final_response` (true on the last one).

Python models take JSON: a single BYTES input named `json` holding one JSON document is passed
as-is; otherwise the inputs become a dict {name: value}, where a one-element tensor gives its
scalar and a larger one a nested list in its shape (BYTES as UTF-8 text). Output: `output`,
BYTES, one JSON document per item: ModelInfer sends them all in one response (shape [n]);
ModelStreamInfer sends each item as the model yields it, then an empty final response (shape [0]).

Never import this module (it loads basalt.pb.kserve_pb2) into a process that imports
tritonclient: both register the same `inference.*` protobuf symbols.
"""

from __future__ import annotations

from basalt.kserve.requests import (
    LLM_INPUTS,
    LLM_OUTPUT,
    PYTHON_INPUT,
    PYTHON_OUTPUT,
    PYTHON_PLATFORM,
    InvalidInput,
    LlmCall,
    Tensor,
    check_outputs,
    output_name,
    parse_llm_request,
    python_payload,
    read_inputs,
    refuse_stream_on_infer,
    sampling_from_settings,
)
from basalt.kserve.responses import (
    FINAL_FLAG,
    SERVER_NAME,
    SERVER_VERSION,
    JsonResponses,
    Response,
    TextResponses,
    bytes_raw,
    bytes_response,
    model_metadata,
    server_metadata,
    stream_error,
    stream_response,
)

__all__ = [
    "FINAL_FLAG",
    "LLM_INPUTS",
    "LLM_OUTPUT",
    "PYTHON_INPUT",
    "PYTHON_OUTPUT",
    "PYTHON_PLATFORM",
    "SERVER_NAME",
    "SERVER_VERSION",
    "InvalidInput",
    "JsonResponses",
    "LlmCall",
    "Response",
    "Tensor",
    "TextResponses",
    "bytes_raw",
    "bytes_response",
    "check_outputs",
    "model_metadata",
    "output_name",
    "parse_llm_request",
    "python_payload",
    "read_inputs",
    "refuse_stream_on_infer",
    "sampling_from_settings",
    "server_metadata",
    "stream_error",
    "stream_response",
]
