"""The simulator's rules, pure: no I/O, no clock, randomness from a seeded `Random` only."""

from services.runtime.engines.sim.core.config import SimConfig
from services.runtime.engines.sim.core.replica import (
    CoreStats,
    FinishedRequest,
    SimReplicaCore,
    StepResult,
    validate_request,
)
from services.runtime.engines.sim.core.timing import LLAMA_3_1_8B_H100, StepLoad, TimingProfile

__all__ = [
    "LLAMA_3_1_8B_H100",
    "CoreStats",
    "FinishedRequest",
    "SimConfig",
    "SimReplicaCore",
    "StepLoad",
    "StepResult",
    "TimingProfile",
    "validate_request",
]
