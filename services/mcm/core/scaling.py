"""The rule of applying scale commands, pure: which command must not be applied after the
last one applied, and the bounds of a desired replica count (no I/O)."""

from __future__ import annotations

from enum import Enum

from basalt.pb import deploy_pb2

MAX_REPLICAS = 1000
# A command stamped further ahead of the consumer's clock than this is refused: applied, it
# would make every later command look "older than the last applied", for good.
MAX_CLOCK_SKEW_S = 60.0


class ScaleVerdict(Enum):
    APPLIED = "applied"
    UNCHANGED = "unchanged"
    DUPLICATE = "duplicate"
    STALE = "older than the last applied"
    NO_DEPLOYMENT = "no such deployment"
    INACTIVE = "deployment inactive"
    INVALID = "replicas out of range"
    FUTURE = "stamped in the future"


def decide(cmd: deploy_pb2.ScaleCommand, last: deploy_pb2.ScaleCommand | None,
           now: float | None = None) -> ScaleVerdict | None:
    """Why `cmd` must not be applied after `last` (the last one applied), or None to apply;
    with `now` (the consumer's wall clock), a command from the future is refused."""
    if now is not None and cmd.ts > now + MAX_CLOCK_SKEW_S:
        return ScaleVerdict.FUTURE
    if last is None:
        return None
    if cmd.command_id == last.command_id:
        return ScaleVerdict.DUPLICATE
    if (cmd.ts, cmd.command_id) < (last.ts, last.command_id):
        return ScaleVerdict.STALE
    return None


def settled(cmd: deploy_pb2.ScaleCommand, last: deploy_pb2.ScaleCommand | None) -> bool:
    """Whether `cmd` needs no more waiting for: `last` (the last applied) is it or newer, in
    the same (ts, command_id) order `decide` applies by."""
    return last is not None and (last.ts, last.command_id) >= (cmd.ts, cmd.command_id)
