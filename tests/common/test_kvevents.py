"""KV events survive the trip through protobuf unchanged."""

from basalt.kvevents import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    KvEventBatchData,
    batch_from_proto,
    batch_to_proto,
)
from basalt.pb import events_pb2


def test_batch_round_trip_keeps_every_field() -> None:
    batch = KvEventBatchData(
        replica_id="r1", seq=7, ts=1.5, epoch="e1",
        events=[
            BlockStored([2**64 - 1, 5], None, list(range(32)), 16, None),
            BlockStored([9], 5, list(range(16)), 16, "adapter"),
            BlockRemoved([5]),
            AllBlocksCleared(),
        ],
    )
    wire = batch_to_proto(batch).SerializeToString()
    back = batch_from_proto(events_pb2.KvEventBatch.FromString(wire))
    assert back == batch


def test_parent_zero_is_not_confused_with_no_parent() -> None:
    batch = KvEventBatchData("r", 1, 0.0, "e", [BlockStored([1], 0, [1] * 4, 4)])
    back = batch_from_proto(events_pb2.KvEventBatch.FromString(batch_to_proto(batch).SerializeToString()))
    assert back.events[0].parent_block_hash == 0
