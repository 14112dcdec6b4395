"""A mirror of one replica's prefix cache, rebuilt from its own KV events (no I/O).

The runtime keeps it beside the event stream so it can answer a KV-state dump for any
engine, including vLLM, which has no dump call of its own.
"""

from __future__ import annotations

from dataclasses import dataclass

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent


@dataclass(slots=True)
class _Block:
    parent: int | None
    token_ids: list[int]
    block_size: int
    lora_name: str | None


class KvMirror:
    """Engine block hash → block, kept in step with BlockStored / BlockRemoved events."""

    def __init__(self) -> None:
        self._blocks: dict[int, _Block] = {}

    def __len__(self) -> int:
        return len(self._blocks)

    def apply(self, events: list[KvEvent]) -> None:
        for event in events:
            if isinstance(event, BlockStored):
                parent = event.parent_block_hash
                size = event.block_size
                for i, block_hash in enumerate(event.block_hashes):
                    tokens = event.token_ids[i * size : (i + 1) * size]
                    self._blocks[block_hash] = _Block(parent, tokens, size, event.lora_name)
                    parent = block_hash
            elif isinstance(event, BlockRemoved):
                for block_hash in event.block_hashes:
                    self._blocks.pop(block_hash, None)
            elif isinstance(event, AllBlocksCleared):
                self._blocks.clear()

    def dump(self) -> list[BlockStored]:
        """Every cached block as a one-block BlockStored, each parent before its children.

        Blocks whose parent is no longer cached come first as roots of their own chains."""
        children: dict[int | None, list[int]] = {}
        for block_hash, block in self._blocks.items():
            parent = block.parent if block.parent in self._blocks else None
            children.setdefault(parent, []).append(block_hash)
        out: list[BlockStored] = []
        stack = list(reversed(children.get(None, [])))
        while stack:
            block_hash = stack.pop()
            block = self._blocks[block_hash]
            out.append(
                BlockStored(
                    block_hashes=[block_hash],
                    parent_block_hash=block.parent,
                    token_ids=block.token_ids,
                    block_size=block.block_size,
                    lora_name=block.lora_name,
                )
            )
            stack.extend(reversed(children.get(block_hash, [])))
        return out
