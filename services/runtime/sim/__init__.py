"""The `sim` engine: a simulator of a vLLM replica, a pure core in virtual time plus an asyncio
adapter behind the runtime's `Engine` protocol (this module does no I/O).

Modules: block_pool (paged KV blocks, prefix cache, KV events), timing (step-time model and
the default Llama-3.1-8B / H100 profile), sequence (request state, deterministic tokens),
scheduler (continuous batching), core (`SimReplicaCore`), config (`SimConfig`), engine
(`SimEngine`, the only module that sleeps; imported on first use, so the core can be used
without asyncio or logging).
"""

from typing import Any

from .config import SimConfig
from .core import CoreStats, FinishedRequest, SimReplicaCore, StepResult, validate_request
from .timing import LLAMA_3_1_8B_H100, StepLoad, TimingProfile

__all__ = [
    "LLAMA_3_1_8B_H100",
    "CoreStats",
    "FinishedRequest",
    "SimConfig",
    "SimEngine",
    "SimReplicaCore",
    "StepLoad",
    "StepResult",
    "TimingProfile",
    "validate_request",
]


def __getattr__(name: str) -> Any:
    if name == "SimEngine":
        from .engine import SimEngine

        return SimEngine
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
