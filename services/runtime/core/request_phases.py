"""A request's phases inside the runtime, and the hook an engine calls when it accepts one (no I/O).

Phases (the `phase` label of `basalt_runtime_request_phase_seconds`):
  receive      the request parsed and validated (arrival at the handler to a GenerateInput)
  engine_add   validated to accepted by the engine (vLLM: `AsyncLLM.add_request` returned;
               sim: queued in its core); not observed for an engine that does not say
  first_token  accepted (or validated, where the engine does not say) to the first token
               out of the engine: queueing and prefill
  send         one stream message's write, from handing it to gRPC until gRPC takes the next
               (per message; a slow client or a busy process shows here)

The server sets `ENGINE_ACCEPTED` to a callable before the engine's generator first runs; an
engine adapter calls `mark_engine_accepted()` once the engine holds the request. A context
variable, so the `Engine` protocol stays as it is and engines that do not call it still work.
"""

from __future__ import annotations

from collections.abc import Callable
from contextvars import ContextVar

PHASES = ("receive", "engine_add", "first_token", "send")

ENGINE_ACCEPTED: ContextVar[Callable[[], None] | None] = ContextVar(
    "basalt_engine_accepted", default=None
)


def mark_engine_accepted() -> None:
    """Called by an engine adapter when it holds the request (a no-op outside a handler)."""
    hook = ENGINE_ACCEPTED.get()
    if hook is not None:
        hook()
