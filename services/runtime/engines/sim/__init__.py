"""The `sim` engine: a SIMULATOR of a vLLM replica (no I/O here). `core/` holds its rules in
virtual time (block_pool: paged KV blocks, prefix cache, KV events; timing: the step-time model
and the Llama-3.1-8B / H100 profile; sequence: request state, deterministic tokens; scheduler:
continuous batching; replica: `SimReplicaCore`; config: `SimConfig`), pure and usable without
asyncio (the routing benchmark drives dozens of them); `engine.py` is the asyncio adapter
behind the runtime's `Engine` protocol, the only module that sleeps.
"""

__all__ = ["core", "engine"]
