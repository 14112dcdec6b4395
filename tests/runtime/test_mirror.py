"""The runtime's KV mirror answers dumps that rebuild the same cache, parents first."""

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored
from services.runtime.core.mirror import KvMirror


def _stored(hashes, parent, size=2):
    return BlockStored(hashes, parent, [h % 100 for h in hashes for _ in range(size)], size)


def test_dump_lists_parents_before_children() -> None:
    m = KvMirror()
    m.apply([_stored([1, 2], None), _stored([3], 2), _stored([4], 1)])
    order = [b.block_hashes[0] for b in m.dump()]
    assert sorted(order) == [1, 2, 3, 4]
    for block in m.dump():
        if block.parent_block_hash is not None:
            assert order.index(block.parent_block_hash) < order.index(block.block_hashes[0])


def test_removed_and_cleared_blocks_leave_the_dump() -> None:
    m = KvMirror()
    m.apply([_stored([1, 2, 3], None), BlockRemoved([3])])
    assert [b.block_hashes[0] for b in m.dump()] == [1, 2]
    m.apply([AllBlocksCleared()])
    assert m.dump() == []


def test_a_child_re_stored_after_its_parent_was_evicted_still_dumps() -> None:
    m = KvMirror()
    m.apply([_stored([1, 2], None), BlockRemoved([1]), _stored([1], None)])
    order = [b.block_hashes[0] for b in m.dump()]
    assert order.index(1) < order.index(2)
    assert {b.block_hashes[0]: b.token_ids for b in m.dump()}[2] == [2, 2]
