"""A child process that dies with its parent (Linux `prctl(PR_SET_PDEATHSIG)`; does I/O).

A supervisor killed with SIGKILL cannot stop its children; the kernel can: a child that asks
gets `sig` the moment its parent thread exits. Elsewhere than Linux this does nothing and the
caller's own fallback applies (a closed pipe, a stop by pid).
"""

from __future__ import annotations

import ctypes
import signal

PR_SET_PDEATHSIG = 1


def die_with_parent(sig: signal.Signals) -> bool:
    """Ask for `sig` when the parent dies; False where the platform has no such request."""
    try:
        return ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, sig) == 0
    except (OSError, AttributeError):
        return False
