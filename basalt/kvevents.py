"""KV-cache events as plain dataclasses, and their protobuf form (no I/O).

One schema for every engine, mirroring vLLM's BlockStored / BlockRemoved / AllBlocksCleared.
Engines produce these; the runtime batches them onto NATS as `KvEventBatch`; routers and
benchmarks consume them without touching protobuf on the hot path.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from basalt.pb import events_pb2


@dataclass(slots=True, frozen=True)
class BlockStored:
    block_hashes: list[int]
    parent_block_hash: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None = None


@dataclass(slots=True, frozen=True)
class BlockRemoved:
    block_hashes: list[int]


@dataclass(slots=True, frozen=True)
class AllBlocksCleared:
    pass


KvEvent = BlockStored | BlockRemoved | AllBlocksCleared


@dataclass(slots=True)
class KvEventBatchData:
    replica_id: str
    seq: int
    ts: float
    epoch: str
    events: list[KvEvent] = field(default_factory=list)


def stored_to_proto(e: BlockStored) -> events_pb2.BlockStored:
    msg = events_pb2.BlockStored(
        block_hashes=e.block_hashes,
        token_ids=e.token_ids,
        block_size=e.block_size,
        lora_name=e.lora_name or "",
    )
    if e.parent_block_hash is not None:
        msg.parent_block_hash = e.parent_block_hash
    return msg


def stored_from_proto(m: events_pb2.BlockStored) -> BlockStored:
    return BlockStored(
        block_hashes=list(m.block_hashes),
        parent_block_hash=m.parent_block_hash if m.HasField("parent_block_hash") else None,
        token_ids=list(m.token_ids),
        block_size=m.block_size,
        lora_name=m.lora_name or None,
    )


def event_to_proto(e: KvEvent) -> events_pb2.KvEvent:
    if isinstance(e, BlockStored):
        return events_pb2.KvEvent(stored=stored_to_proto(e))
    if isinstance(e, BlockRemoved):
        return events_pb2.KvEvent(removed=events_pb2.BlockRemoved(block_hashes=e.block_hashes))
    return events_pb2.KvEvent(cleared=events_pb2.AllBlocksCleared())


def event_from_proto(m: events_pb2.KvEvent) -> KvEvent:
    kind = m.WhichOneof("event")
    if kind == "stored":
        return stored_from_proto(m.stored)
    if kind == "removed":
        return BlockRemoved(block_hashes=list(m.removed.block_hashes))
    if kind == "cleared":
        return AllBlocksCleared()
    raise ValueError(f"KvEvent with no event set: {m!r}")


def batch_to_proto(b: KvEventBatchData) -> events_pb2.KvEventBatch:
    return events_pb2.KvEventBatch(
        replica_id=b.replica_id,
        seq=b.seq,
        ts=b.ts,
        epoch=b.epoch,
        events=[event_to_proto(e) for e in b.events],
    )


def batch_from_proto(m: events_pb2.KvEventBatch) -> KvEventBatchData:
    return KvEventBatchData(
        replica_id=m.replica_id,
        seq=m.seq,
        ts=m.ts,
        epoch=m.epoch,
        events=[event_from_proto(e) for e in m.events],
    )
