"""The node weight cache's rules, with no I/O: what to evict, what is in use, how fast a
fetch goes and when it ends, and which tier a start found its weights in."""
