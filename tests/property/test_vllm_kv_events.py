"""Hypothesis over the vllm engine's consumer of vLLM's own KV events (ZMQ multipart frames,
msgspec msgpack payloads): arbitrary frames never stop the reader, and the next valid batch
still arrives converted. The engine's real ZMQ socket and reader task run; a real ZMQ PUB
socket stands where vLLM's publisher would (vLLM itself is not started, only its event types
are imported, which alone takes ~15 s: hence the vllm marker).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from basalt.kvevents import BlockStored as OurStored
from services.runtime.engines.vllm import VllmConfig, VllmEngine
from tests.property.support import FUZZ

pytestmark = [pytest.mark.integration, pytest.mark.vllm]
msgspec = pytest.importorskip("msgspec")
zmq = pytest.importorskip("zmq")
TOPIC = b"kv"


@pytest.fixture(scope="module")
def kv_events() -> Any:
    return pytest.importorskip("vllm.distributed.kv_events")


@pytest.fixture(scope="module")
async def reading() -> AsyncIterator[tuple[VllmEngine, str]]:
    """The engine's KV-event socket and reader, without vLLM behind them; and the socket's
    endpoint, where vLLM's publisher would connect."""
    e = VllmEngine(VllmConfig(model="unused", kv_events_topic=TOPIC.decode()))
    endpoint = e._open_kv_socket()
    e._reader = asyncio.create_task(e._read_kv_events())
    yield e, endpoint
    await e._close_kv_socket()


@pytest.fixture(scope="module")
def engine(reading: tuple[VllmEngine, str]) -> VllmEngine:
    return reading[0]


@pytest.fixture(scope="module")
def publisher(reading: tuple[VllmEngine, str]) -> Iterator[Any]:
    ctx = zmq.Context()
    sock = ctx.socket(zmq.PUB)
    sock.connect(reading[1])
    yield sock
    sock.close(linger=0)
    ctx.term()


def _valid(kv_events: Any, n: int) -> bytes:
    batch = kv_events.KVEventBatch(ts=time.time(), events=[kv_events.BlockStored(
        block_hashes=[n], parent_block_hash=None, token_ids=list(range(16)), block_size=16,
        lora_id=None, medium=None, lora_name=None)])
    return msgspec.msgpack.encode(batch)


async def _next_stored(engine: VllmEngine, publisher: Any, kv_events: Any, n: int) -> None:
    """Publish a valid batch (again, while the subscription is still joining) until the
    reader hands it on, converted; batches of garbage that decoded are skipped."""
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline:
        assert engine._reader is not None and not engine._reader.done(), "the reader stopped"
        publisher.send_multipart([TOPIC, n.to_bytes(8, "big"), _valid(kv_events, n)])
        try:
            while True:
                events = await asyncio.wait_for(engine._kv_queue.get(), timeout=0.1)
                assert events is not None
                if any(isinstance(e, OurStored) and e.block_hashes == [n] for e in events):
                    return
        except TimeoutError:
            continue
    raise AssertionError("no valid batch came through after the garbage")


_any_msgpack = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats()
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=4), max_leaves=12)
_event_like = st.fixed_dictionaries(
    {"type": st.sampled_from(["BlockStored", "BlockRemoved", "AllBlocksCleared", "Other"])},
    optional={"block_hashes": _any_msgpack, "parent_block_hash": _any_msgpack,
              "token_ids": _any_msgpack, "block_size": _any_msgpack, "lora_id": _any_msgpack,
              "medium": _any_msgpack, "lora_name": _any_msgpack})
# Payloads shaped like vLLM's batches ([ts, [events], dp_rank]) with any value, and any other.
_payloads = st.one_of(
    st.binary(max_size=64),
    st.tuples(_any_msgpack, st.lists(_event_like, max_size=3), _any_msgpack).map(
        lambda t: msgspec.msgpack.encode(list(t))),
    _any_msgpack.map(msgspec.msgpack.encode),
)
_frames = st.one_of(
    st.tuples(st.binary(max_size=8), _payloads).map(lambda t: [TOPIC, t[0], t[1]]),
    st.lists(st.binary(max_size=16), min_size=1, max_size=5).map(lambda fs: [TOPIC, *fs]),
)


@FUZZ
@given(frames=_frames, n=st.integers(0, 2**62))
async def test_garbage_frames_never_stop_the_kv_event_reader(
    engine: VllmEngine, publisher: Any, kv_events: Any, frames: list[bytes], n: int,
) -> None:
    publisher.send_multipart(frames)
    await _next_stored(engine, publisher, kv_events, n)
