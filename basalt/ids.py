"""Id and hash types shared across services (no I/O)."""

from typing import NewType

ReplicaId = NewType("ReplicaId", str)
RequestId = NewType("RequestId", str)
# A block hash as an engine publishes it (64-bit, vLLM's int form).
EngineBlockHash = NewType("EngineBlockHash", int)
