"""A replica's start failure in one line: written by the runtime when it cannot start, read
back by the control plane from the replica's log (pure, no I/O).

A replica that dies while starting leaves a log whose last screen is usually a traceback, and
often a second one from tearing down half-started parts. The runtime prints one marker line
(`basalt runtime: start failed in <phase>: <Type>: <message>`) instead; the control plane
looks for it first, then for the last Python exception line, then the last line at all, so
`basalt status` can say what went wrong in a line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

MARK = "basalt runtime: start failed in "
# Where in the start a replica can fail (the runtime's own phases, in order).
PHASES = ("settings", "connect", "weights", "engine", "lora", "warm_up")
_EXCEPTION = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Exit|Interrupt)\b:?.*")
_MAX = 300


@dataclass(slots=True, frozen=True)
class StartError:
    phase: str
    message: str


def one_line(text: str, limit: int = _MAX) -> str:
    """`text` on one line, cut at `limit` characters."""
    flat = " ".join(text.split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "…"


def describe(exc: BaseException) -> str:
    """`Type: message` for an exception (the type alone when it has no message)."""
    msg = str(exc)
    return one_line(f"{type(exc).__name__}: {msg}" if msg else type(exc).__name__)


def marker_line(phase: str, exc: BaseException) -> str:
    return f"{MARK}{phase}: {describe(exc)}"


def parse(log_text: str) -> StartError | None:
    """The start error a replica's log shows: its marker line (phase known), else the last
    exception line, else the last non-empty line (phase unknown); None for an empty log."""
    lines = [ln.strip() for ln in log_text.splitlines() if ln.strip()]
    for ln in reversed(lines):
        at = ln.find(MARK)
        if at >= 0:
            phase, _, message = ln[at + len(MARK):].partition(": ")
            return StartError(phase, one_line(message))
    for ln in reversed(lines):
        if _EXCEPTION.match(ln):
            return StartError("", one_line(ln))
    return StartError("", one_line(lines[-1])) if lines else None
