"""The node weight cache's rules, with no I/O: `cache` (what to evict, what is in use, which
tier a start found its weights in, what the warm tier keeps) and `progress` (a fetch's rate,
time left, the node's bandwidth)."""

__all__ = ["cache", "progress"]
