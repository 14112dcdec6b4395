"""The router's own chained block hash over token ids and LoRA name (pure, no I/O).

hash(block i) = H(seed, H(lora), hash(block i-1) or 0, tokens of block i), 64 bits, where H is
a hashlib-style hasher (default BLAKE2b with an 8-byte digest) and tokens are encoded as
little-endian uint32. It depends on nothing but its inputs, so every router process, on any
machine, computes the same hashes, whatever hash function or seed each engine uses.

Speed: seed and LoRA are absorbed once into a template hasher; each block then costs one
`copy()` + `update()` + `digest()` (one BLAKE2b compression for 16-token blocks), and the
digests are turned into ints in one `array('Q')` call.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable, Sequence
from typing import Protocol

from services.router.core.errors import InvalidBlockSize
from services.router.core.types import OwnBlockHash

_ROOT_PARENT = bytes(8)
_BIG_ENDIAN = sys.byteorder == "big"
_U64 = (1 << 64) - 1
assert array("I").itemsize == 4, "uint32 token encoding needs a 4-byte array('I')"


class Hasher(Protocol):
    """The part of hashlib's hash object interface the chain uses."""

    @property
    def digest_size(self) -> int: ...

    def update(self, data: bytes, /) -> None: ...

    def copy(self) -> Hasher: ...

    def digest(self) -> bytes: ...


HasherFactory = Callable[[], Hasher]


def default_hasher() -> Hasher:
    """BLAKE2b with an 8-byte digest: fast in CPython, deterministic across processes."""
    return hashlib.blake2b(digest_size=8)


def tokens_to_bytes(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32 bytes (ids must be in 0..2**32-1)."""
    arr = array("I", token_ids)
    if _BIG_ENDIAN:  # pragma: no cover - exercised only on big-endian hosts
        arr.byteswap()
    return arr.tobytes()


def _template(hash_fn: HasherFactory, seed: int, lora_name: str | None) -> Hasher:
    if not 0 <= seed <= _U64:
        raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
    lora_digest = bytes(8)
    if lora_name:
        h = hash_fn()
        h.update(b"lora:" + lora_name.encode("utf-8"))
        lora_digest = h.digest()[:8]
    template = hash_fn()
    template.update(seed.to_bytes(8, "little") + lora_digest)
    return template


def _full_blocks(token_ids: Sequence[int], block_size: int, num_blocks: int) -> bytes:
    end = num_blocks * block_size
    return tokens_to_bytes(token_ids if len(token_ids) == end else token_ids[:end])


def _to_ints(digests: list[bytes]) -> list[OwnBlockHash]:
    arr = array("Q")
    arr.frombytes(b"".join(digests))
    if _BIG_ENDIAN:  # pragma: no cover - exercised only on big-endian hosts
        arr.byteswap()
    return arr.tolist()  # type: ignore[return-value]  # ints are OwnBlockHash


def chain_bytes(
    data: bytes,
    block_size: int,
    num_blocks: int,
    template: Hasher,
    parent: OwnBlockHash | None = None,
) -> list[OwnBlockHash]:
    """Hash the first `num_blocks` blocks of `data` (tokens_to_bytes form) after `parent`."""
    step = block_size * 4
    p = _ROOT_PARENT if parent is None else parent.to_bytes(8, "little")
    digests: list[bytes] = []
    append = digests.append
    copy = template.copy
    if template.digest_size == 8:
        for i in range(0, num_blocks * step, step):
            h = copy()
            h.update(p + data[i : i + step])
            p = h.digest()
            append(p)
    else:
        for i in range(0, num_blocks * step, step):
            h = copy()
            h.update(p + data[i : i + step])
            p = h.digest()[:8]
            append(p)
    return _to_ints(digests)


def block_hashes(
    token_ids: Sequence[int],
    block_size: int,
    lora_name: str | None = None,
    seed: int = 0,
    hash_fn: HasherFactory = default_hasher,
    parent: OwnBlockHash | None = None,
) -> list[OwnBlockHash]:
    """Own hashes of the full blocks of `token_ids` (a trailing partial block is ignored).

    `parent` is the own hash of the block before `token_ids[0]`; None starts a sequence.
    An empty `lora_name` is the base model, like None.
    """
    if block_size < 1:
        raise InvalidBlockSize(block_size)
    num_blocks = len(token_ids) // block_size
    if num_blocks == 0:
        return []
    template = _template(hash_fn, seed, lora_name)
    data = _full_blocks(token_ids, block_size, num_blocks)
    return chain_bytes(data, block_size, num_blocks, template, parent)


class BlockHasher:
    """`block_hashes` with the hash function and seed bound, and templates kept per LoRA."""

    __slots__ = ("_templates", "hash_fn", "seed")

    def __init__(self, seed: int = 0, hash_fn: HasherFactory = default_hasher) -> None:
        self.seed = seed
        self.hash_fn = hash_fn
        self._templates: dict[str | None, Hasher] = {None: _template(hash_fn, seed, None)}

    def template(self, lora_name: str | None) -> Hasher:
        key = lora_name or None
        found = self._templates.get(key)
        if found is None:
            if len(self._templates) > 4096:  # many adapters seen: keep memory bounded
                self._templates = {None: self._templates[None]}
            found = self._templates[key] = _template(self.hash_fn, self.seed, key)
        return found

    def __call__(
        self,
        token_ids: Sequence[int],
        block_size: int,
        lora_name: str | None = None,
        parent: OwnBlockHash | None = None,
    ) -> list[OwnBlockHash]:
        if block_size < 1:
            raise InvalidBlockSize(block_size)
        num_blocks = len(token_ids) // block_size
        if num_blocks == 0:
            return []
        data = _full_blocks(token_ids, block_size, num_blocks)
        return chain_bytes(data, block_size, num_blocks, self.template(lora_name), parent)
