"""The key verifier against a real nats-server: malformed keys cost nothing and are never
cached, the cache is bounded, and an outage of the key store is not a bad key."""

from __future__ import annotations

import contextlib
import secrets
from pathlib import Path

import pytest

from basalt import apikeys, bus, subjects
from basalt_tools.natsserver import NatsServer

pytestmark = pytest.mark.integration


async def _verifier(nc, **kw) -> apikeys.KeyVerifier:  # type: ignore[no-untyped-def]
    return apikeys.KeyVerifier(await bus.kv_bucket(nc, subjects.API_KEYS_BUCKET), **kw)


async def test_a_created_key_verifies_and_a_wrong_secret_does_not(nc) -> None:  # type: ignore[no-untyped-def]
    key = await apikeys.create(nc, "t")
    verifier = await _verifier(nc)
    assert await verifier.verify(key)
    assert not await verifier.verify(key + "x")
    assert not await verifier.verify(None) and not await verifier.verify("")


async def test_malformed_keys_are_refused_without_a_lookup_or_a_cache_entry(nc) -> None:  # type: ignore[no-untyped-def]
    verifier = await _verifier(nc)
    for bad in ("bsk_x.y", "bsk_.y", "nope", "bsk_" + "a" * 5000 + ".y", "bsk_ZZZZZZZZZZZZ.s",
                "bsk_0123456789ab"):  # the last has no secret part
        assert not await verifier.verify(bad)
    assert len(verifier) == 0


async def test_unknown_ids_never_grow_the_cache_past_its_bound(nc) -> None:  # type: ignore[no-untyped-def]
    verifier = await _verifier(nc, max_entries=50)
    for _ in range(200):
        assert not await verifier.verify(f"bsk_{secrets.token_hex(6)}.{secrets.token_hex(8)}")
    assert len(verifier) == 50


async def test_an_outage_keeps_verified_keys_working_and_answers_unavailable_for_others(
        tmp_path: Path) -> None:
    server = NatsServer(store_dir=tmp_path / "nats", log_file=tmp_path / "nats.log").start()
    nc = await bus.connect(server.url, name="test-outage")
    try:
        key = await apikeys.create(nc, "t")
        verifier = await _verifier(nc, cache_s=0.0)  # every call asks the store
        strict = await _verifier(nc, cache_s=0.0, outage_grace_s=0.0)
        assert await verifier.verify(key) and await strict.verify(key)
        server.stop()
        assert await verifier.verify(key), "verified a moment ago: keeps working"
        assert not await verifier.verify(key + "x"), "a wrong secret is still wrong"
        unseen = f"bsk_{secrets.token_hex(6)}.{secrets.token_hex(8)}"
        with pytest.raises(apikeys.KeyStoreUnavailable):
            await verifier.verify(unseen)
        with pytest.raises(apikeys.KeyStoreUnavailable):
            await strict.verify(key)
    finally:
        with contextlib.suppress(ConnectionError):  # the server is gone: closing cannot flush
            await nc.close()
        server.stop()
