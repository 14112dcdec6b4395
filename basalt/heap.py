"""Freezing a service's start-up heap out of the garbage collector (no I/O).

A service that has imported torch, transformers or vLLM holds millions of objects that live as
long as the process. CPython's full collection walks all of them: a pause of tens to hundreds
of milliseconds on the event loop, at a moment set by allocation counts, during which no
token is relayed (streams clump). `freeze()` after start-up, as vLLM's own API server does
(`vllm.utils.gc_utils.freeze_gc_heap`), moves them to a generation the collector never
scans; what is allocated later is collected as usual.
"""

from __future__ import annotations

import gc


def freeze() -> int:
    """Collect once, then freeze every surviving object; returns how many were frozen."""
    gc.collect(0)
    gc.collect(1)
    gc.collect(2)
    gc.freeze()
    return gc.get_freeze_count()
