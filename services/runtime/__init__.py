"""basalt runtime: one replica = one model in one engine, served over gRPC; KV events on NATS.

`core/` holds the rules (pure); `engines/` every engine; beside them the adapters: `server`
(gRPC), `kserve` (KServe v2 servicer), `publisher` (NATS), `warm` (reads the weights into
memory before the engine starts), `factory`, `config`, `metrics`, and `main` wiring them.
"""

__all__ = [
    "config", "core", "engines", "factory", "kserve", "main", "metrics", "publisher", "server",
    "warm",
]
