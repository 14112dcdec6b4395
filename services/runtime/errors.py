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
