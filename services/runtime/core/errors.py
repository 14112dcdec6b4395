"""Errors the runtime raises; each carries the data a caller needs (no I/O)."""

from __future__ import annotations


class RuntimeServiceError(Exception):
    """Base class for runtime errors."""


class InvalidRequest(RuntimeServiceError):
    """The request cannot be served as asked (maps to gRPC INVALID_ARGUMENT)."""


class PromptTooLong(InvalidRequest):
    def __init__(self, prompt_tokens: int, max_tokens: int, max_model_len: int) -> None:
        self.prompt_tokens = prompt_tokens
        self.max_tokens = max_tokens
        self.max_model_len = max_model_len
        super().__init__(
            f"prompt of {prompt_tokens} tokens plus max_tokens {max_tokens} exceeds the "
            f"model's context length of {max_model_len} tokens"
        )


class UnknownLora(InvalidRequest):
    def __init__(self, lora_name: str, loaded: list[str]) -> None:
        self.lora_name = lora_name
        self.loaded = loaded
        super().__init__(f"LoRA adapter {lora_name!r} is not loaded (loaded: {sorted(loaded)})")


class NotSupported(InvalidRequest):
    """The engine does not offer this call (e.g. Predict on an LLM engine)."""


class Draining(RuntimeServiceError):
    """The replica is shutting down and takes no new work (maps to UNAVAILABLE)."""


class UnknownModel(RuntimeServiceError):
    """The request names a model this replica does not serve (maps to NOT_FOUND)."""

    def __init__(self, name: str, served: str) -> None:
        self.name = name
        self.served = served
        super().__init__(f"Request for unknown model: '{name}' is not found (serving '{served}')")


class NotReady(RuntimeServiceError):
    """The replica is loading or draining (maps to UNAVAILABLE)."""


class TensorRtLlmMissing(RuntimeServiceError):
    """The trtllm engine was asked to start where the tensorrt_llm package cannot be imported."""

    def __init__(self, package: str, cause: str) -> None:
        self.package = package
        self.cause = cause
        super().__init__(
            f"the trtllm engine needs the {package!r} Python package (pip install tensorrt-llm, "
            f"on a CUDA host); importing it failed: {cause}"
        )
