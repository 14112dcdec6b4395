"""The router's own chained block hash over token ids and LoRA name (pure, no I/O).

One vectorised pass (numpy) hashes every full block of a prompt; nothing runs per block in
Python (a list of under 96 tokens, as a KV event of a few blocks carries, runs the same
arithmetic in plain ints: cheaper than a numpy call). With tokens t as little-endian uint32
and block i's tokens t[i*bs : (i+1)*bs]:

  content  f_i = sum_k (t_2k + K_2k mod 2^32) * (t_2k+1 + K_2k+1 mod 2^32)   mod 2^64
  chain    P_i = P_(i-1) * M + f_i                                           mod 2^64
  hash     h_i = avalanche(P_i)   (xxh3's: xorshift 37, multiply, xorshift 32)

`f` is NH, the 32x32->64 multiply-accumulate of xxh3's long-input loop: for two different
blocks it collides with probability about 2^-32 over the keys K. `P` is a polynomial in M, so
every block's state depends on every block before it, in order; all `P_i` come from one
`cumsum` (P_i = M^i * (P_(-1)*M + sum_j f_j * M^-j)). The avalanche spreads every bit of P
over the 64 and is a bijection, so a chain continues from any own hash (`parent`): its
inverse gives P back. P_(-1) (the root) mixes the seed, block size and LoRA name; K mixes seed and block size. Both
come from `hash_fn` (BLAKE2b-8 by default) once per hasher and LoRA, never per request.

Determinism: the result depends on nothing but token ids, block size, LoRA name, seed and
`hash_fn`, with fixed-width wrap-around arithmetic, so every router process on any machine
that shares a seed computes the same hashes, whatever hash each engine uses.

Collisions: this is a fast hash, not a cryptographic one (and with a known seed, collisions
can be built, e.g. Thue-Morse sequences of 2,048 blocks against any polynomial mod 2^64). A
collision only ever costs a routing choice: the router may send a request to a replica that
does not in fact hold the prefix, and that replica's engine, which hashes with its own
function, simply computes the prefill. No output depends on it.

Input: token ids as a list of ints, or packed once as little-endian uint32 (`pack_tokens`:
bytes, an `array('I')`, a memoryview or a numpy uint32 array); packing a 16k-token list costs
more than hashing it, so callers on a hot path pack in the thread that tokenizes.
"""

from __future__ import annotations

import hashlib
import sys
from array import array
from collections.abc import Callable, Sequence
from operator import mul
from typing import Protocol, TypeAlias

import numpy as np
import numpy.typing as npt

from services.router.core.errors import InvalidBlockSize
from services.router.core.types import OwnBlockHash

__all__ = [
    "BlockHasher",
    "Hasher",
    "HasherFactory",
    "OwnHashes",
    "TokenIds",
    "block_hashes",
    "chain_bytes",
    "default_hasher",
    "pack_tokens",
    "tokens_to_bytes",
]

_BIG_ENDIAN = sys.byteorder == "big"
# Below this many tokens in a list, the chain runs in plain ints (`chain_small`).
_SMALL_TOKENS = 96
_U64 = (1 << 64) - 1
assert array("I").itemsize == 4, "uint32 token encoding needs a 4-byte array('I')"

# The chain's multiplier (odd, so invertible mod 2^64) and its inverse.
_M = 0x9E3779B97F4A7C15
_M_INV = pow(_M, -1, 1 << 64)
# xxh3's avalanche multiplier and its inverse.
_AVAL = 0x165667919E3779F9
_AVAL_INV = pow(_AVAL, -1, 1 << 64)
_NAVAL = np.uint64(_AVAL)
_S32, _S37, _LOW32 = np.uint64(32), np.uint64(37), np.uint64(0xFFFFFFFF)

# The own hashes of a chain of blocks, one uint64 per block.
OwnHashes: TypeAlias = npt.NDArray[np.uint64]
# Token ids as ints, or packed as little-endian uint32 (`pack_tokens`).
TokenIds: TypeAlias = Sequence[int] | bytes | bytearray | memoryview | array | npt.NDArray[np.uint32]


class Hasher(Protocol):
    """The part of hashlib's hash object interface the key derivation uses."""

    @property
    def digest_size(self) -> int: ...

    def update(self, data: bytes, /) -> None: ...

    def copy(self) -> Hasher: ...

    def digest(self) -> bytes: ...


HasherFactory = Callable[[], Hasher]


def default_hasher() -> Hasher:
    """BLAKE2b with an 8-byte digest: derives the chain's keys and roots (not per block)."""
    return hashlib.blake2b(digest_size=8)


def pack_tokens(token_ids: Sequence[int]) -> bytes:
    """Token ids as little-endian uint32 bytes, the packed form the hasher reads without a
    copy (ids must be in 0..2**32-1, else OverflowError)."""
    arr = array("I", token_ids)
    if _BIG_ENDIAN:  # pragma: no cover - exercised only on big-endian hosts
        arr.byteswap()
    return arr.tobytes()


tokens_to_bytes = pack_tokens  # the older name (bench/traces.py)


def _as_uint32(token_ids: TokenIds) -> npt.NDArray[np.uint32]:
    """A uint32 view (no copy where the input is packed already) of the token ids."""
    if isinstance(token_ids, np.ndarray):
        if token_ids.dtype == np.uint32:
            return token_ids.reshape(-1)
        if token_ids.size and (token_ids.min() < 0 or token_ids.max() > 0xFFFFFFFF):
            raise OverflowError("token ids must be in 0..2**32-1")
        return token_ids.astype(np.uint32).reshape(-1)
    if isinstance(token_ids, array):
        if token_ids.itemsize != 4 or token_ids.typecode not in "IL":
            raise TypeError(f"a packed token array must be array('I'), got {token_ids.typecode!r}")
        return np.frombuffer(token_ids, dtype=np.uint32)
    if isinstance(token_ids, bytes | bytearray | memoryview):
        return np.frombuffer(token_ids, dtype="<u4")
    arr = array("I", token_ids)
    return np.frombuffer(arr, dtype=np.uint32)


def _avalanche(p: OwnHashes) -> OwnHashes:
    """xxh3's avalanche over `p`, in place (a bijection on 64 bits)."""
    tmp = np.right_shift(p, _S37)
    p ^= tmp
    p *= _NAVAL
    np.right_shift(p, _S32, out=tmp)
    p ^= tmp
    return p


def _unavalanche(h: int) -> int:
    """The inverse of `_avalanche` for one value: the chain state behind an own hash."""
    h ^= h >> 32
    h = (h * _AVAL_INV) & _U64
    return h ^ (h >> 37)


def _derive(hash_fn: HasherFactory, label: bytes, nbytes: int) -> bytes:
    """`nbytes` of key material from `hash_fn` over `label`, in counter mode."""
    out = b""
    counter = 0
    while len(out) < nbytes:
        h = hash_fn()
        h.update(counter.to_bytes(4, "little") + label)
        out += h.digest()
        counter += 1
    return out[:nbytes]


class BlockHasher:
    """The chain hash with its seed and key-derivation function bound, and per block size
    its keys and per LoRA its root kept (bounded). Call it as `hasher(token_ids, block_size,
    lora_name)`: a uint64 array, one own hash per full block (a trailing partial block is
    ignored). Not thread-safe (it grows its tables in place)."""

    __slots__ = ("_keys", "_m_inv_pow", "_m_pow", "_roots", "_small", "hash_fn", "seed")

    def __init__(self, seed: int = 0, hash_fn: HasherFactory = default_hasher) -> None:
        if not 0 <= seed <= _U64:
            raise ValueError(f"seed must be in 0..2**64-1, got {seed}")
        self.seed = seed
        self.hash_fn = hash_fn
        self._keys: dict[int, npt.NDArray[np.uint32]] = {}  # block size -> tiled lane keys
        self._small: dict[int, list[int]] = {}  # block size -> one block's lane keys
        self._roots: dict[tuple[str | None, int], int] = {}
        self._m_pow = np.ones(1, dtype=np.uint64)  # M^i
        self._m_inv_pow = np.ones(1, dtype=np.uint64)  # M^-i

    def root(self, lora_name: str | None, block_size: int) -> int:
        """P_(-1) of a chain that starts a sequence (an empty LoRA name is the base model)."""
        key = (lora_name or None, block_size)
        found = self._roots.get(key)
        if found is None:
            if len(self._roots) > 4096:  # many adapters seen: keep memory bounded
                self._roots.clear()
            label = b"root" + self._label(block_size)
            if key[0] is not None:
                label += b"lora:" + key[0].encode("utf-8")
            found = self._roots[key] = int.from_bytes(_derive(self.hash_fn, label, 8), "little")
        return found

    def template(self, lora_name: str | None) -> _Template:
        """The chain bound to a LoRA, for `chain_bytes` (bench/traces.py)."""
        return _Template(self, lora_name)

    def __call__(
        self,
        token_ids: TokenIds,
        block_size: int,
        lora_name: str | None = None,
        parent: OwnBlockHash | None = None,
    ) -> OwnHashes:
        """Own hashes of the full blocks of `token_ids`; `parent` is the own hash of the block
        before `token_ids[0]` (None starts a sequence)."""
        if block_size < 1:
            raise InvalidBlockSize(block_size)
        state = self.root(lora_name, block_size) if parent is None else _unavalanche(int(parent))
        if isinstance(token_ids, list) and len(token_ids) < _SMALL_TOKENS:
            return np.array(self.chain_small(token_ids, block_size, state), dtype=np.uint64)
        tokens = _as_uint32(token_ids)
        num_blocks = tokens.size // block_size
        if num_blocks == 0:
            return np.empty(0, dtype=np.uint64)
        return self._chain(tokens[: num_blocks * block_size], block_size, num_blocks, state)

    def ints(
        self,
        token_ids: Sequence[int],
        block_size: int,
        lora_name: str | None = None,
        parent: OwnBlockHash | None = None,
    ) -> list[OwnBlockHash]:
        """`self(...)` as a list of ints, the cheapest form for a few blocks (KV events)."""
        if block_size < 1:
            raise InvalidBlockSize(block_size)
        if len(token_ids) < _SMALL_TOKENS:
            state = self.root(lora_name, block_size) if parent is None else _unavalanche(parent)
            return self.chain_small(token_ids, block_size, state)  # type: ignore[return-value]
        return self(token_ids, block_size, lora_name, parent).tolist()  # type: ignore[no-any-return]

    def chain_small(self, token_ids: Sequence[int], block_size: int, state: int) -> list[int]:
        """The same chain in plain ints (a numpy call costs more than a few blocks do): the
        full blocks of `token_ids` after chain state `state`."""
        n = len(token_ids) // block_size
        tokens = array("I", token_ids[: n * block_size])  # OverflowError past uint32
        keys = self._small.get(block_size)
        if keys is None:
            keys = self._small[block_size] = self._lane_keys(block_size, 1)[
                : block_size + (block_size & 1)
            ].tolist()
        pad = [keys[-1]] if block_size & 1 else []
        out: list[int] = []
        for i in range(0, n * block_size, block_size):
            lanes = [(t + k) & 0xFFFFFFFF for t, k in zip(tokens[i : i + block_size], keys)]
            lanes += pad
            state = (state * _M + sum(map(mul, lanes[0::2], lanes[1::2]))) & _U64
            h = state ^ (state >> 37)
            h = (h * _AVAL) & _U64
            out.append(h ^ (h >> 32))
        return out

    # -- internals -------------------------------------------------------------------------

    def _label(self, block_size: int) -> bytes:
        return b"basalt-own-hash-v2" + self.seed.to_bytes(8, "little") + block_size.to_bytes(
            4, "little"
        )

    def _lane_keys(self, block_size: int, tokens: int) -> npt.NDArray[np.uint32]:
        """At least `tokens` uint32 keys: the block's keys repeated (grown by doubling)."""
        keys = self._keys.get(block_size)
        if keys is None or keys.size < tokens:
            width = block_size + (block_size & 1)
            one = np.frombuffer(
                _derive(self.hash_fn, b"keys" + self._label(block_size), 4 * width), dtype="<u4"
            ).astype(np.uint32)
            have = 0 if keys is None else keys.size // width
            reps = max(-(-tokens // width), 2 * have, 64)
            if len(self._keys) > 64:
                self._keys.clear()
                self._small.clear()
            keys = self._keys[block_size] = np.tile(one, reps)
        return keys

    def _powers(self, n: int) -> tuple[OwnHashes, OwnHashes]:
        """M^i and M^-i for i in 0..n-1 (tables grown by doubling)."""
        if self._m_pow.size < n:
            size = max(n, 2 * self._m_pow.size, 1024)
            m = np.full(size, _M, dtype=np.uint64)
            m[0] = 1
            self._m_pow = np.cumprod(m, dtype=np.uint64)
            m[1:] = _M_INV
            self._m_inv_pow = np.cumprod(m, dtype=np.uint64)
        return self._m_pow[:n], self._m_inv_pow[:n]

    def _chain(
        self, tokens: npt.NDArray[np.uint32], block_size: int, n: int, state: int
    ) -> OwnHashes:
        width = block_size + (block_size & 1)
        if width != block_size:  # odd block size: one zero token pads each block
            padded = np.zeros((n, width), dtype=np.uint32)
            padded[:, :block_size] = tokens.reshape(n, block_size)
            tokens = padded.reshape(-1)
        keys = self._lane_keys(block_size, tokens.size)
        # Each uint64 lane holds two keyed tokens; the product of its halves is the same
        # whichever half is which, so this is NH on hosts of either byte order.
        lanes = np.add(tokens, keys[: tokens.size]).view(np.uint64)
        content = lanes & _LOW32
        lanes >>= _S32
        content *= lanes
        content = np.einsum("ij->i", content.reshape(n, width // 2))
        m_pow, m_inv_pow = self._powers(n)
        content *= m_inv_pow
        head = content[:1]
        np.add(head, np.uint64((state * _M) & _U64), out=head)
        np.cumsum(content, out=content)
        content *= m_pow
        return _avalanche(content)


class _Template:
    """A `BlockHasher` bound to one LoRA name: what `chain_bytes` takes."""

    __slots__ = ("hasher", "lora_name")

    def __init__(self, hasher: BlockHasher, lora_name: str | None) -> None:
        self.hasher = hasher
        self.lora_name = lora_name


def chain_bytes(
    data: bytes,
    block_size: int,
    num_blocks: int,
    template: _Template,
    parent: OwnBlockHash | None = None,
) -> list[OwnBlockHash]:
    """Own hashes (ints) of the first `num_blocks` blocks of packed `data` after `parent`."""
    tokens = np.frombuffer(data, dtype="<u4", count=num_blocks * block_size)
    hashes = template.hasher(tokens, block_size, template.lora_name, parent)
    return hashes.tolist()  # type: ignore[no-any-return]  # ints are OwnBlockHash


def block_hashes(
    token_ids: TokenIds,
    block_size: int,
    lora_name: str | None = None,
    seed: int = 0,
    hash_fn: HasherFactory = default_hasher,
    parent: OwnBlockHash | None = None,
) -> list[OwnBlockHash]:
    """Own hashes, as ints, of the full blocks of `token_ids` (a trailing partial block is
    ignored); `parent` is the own hash of the block before `token_ids[0]`, None starts a
    sequence; an empty `lora_name` is the base model, like None. Builds its keys on each
    call: a hot path keeps a `BlockHasher`."""
    hashes = BlockHasher(seed, hash_fn)(token_ids, block_size, lora_name, parent)
    return hashes.tolist()  # type: ignore[no-any-return]  # ints are OwnBlockHash
