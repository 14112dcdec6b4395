"""The router's HTTP door under big requests (the app served in-process over ASGI, a real
tokenizer): a body past the limit gets 413 before it is parsed, declared or chunked, and a
long prompt is tokenized off the event loop, so /health answers meanwhile; a bug is still a
500 in the OpenAI error shape, and its access entry says 500."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.responses import JSONResponse

from basalt.pb import deploy_pb2
from services.router.core.access import AccessEntry
from services.router.core.deployments import DeploymentTable
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex
from services.router.core.ratelimit import KeyLimits
from services.router.core.types import PolicyConfig, RegionLatency
from services.router.dispatch import Channels, Dispatcher
from services.router.key_auth import KeyAuth
from services.router.openai_api import AppState, create_app
from services.router.tokenizers import Tokenizers


class TimedTokenizers(Tokenizers):
    """The real tokenizers, noting when each encode ended (in threads: no helper process, so
    this process sees every encode; tests/router/test_responsive.py covers the process)."""

    encoded_at: list[float]

    def __init__(self) -> None:
        super().__init__(process_chars=0)
        self.encoded_at = []

    async def get(self, dep: deploy_pb2.DeploymentRecord) -> Any:
        real = await super().get(dep)
        outer = self

        class Timed:
            def __getattr__(self, name: str) -> Any:
                return getattr(real, name)

            def encode(self, text: str) -> list[int]:
                ids = real.encode(text)
                outer.encoded_at.append(time.monotonic())
                return ids

        return Timed()


def _app(tiny_model: Path, **state: Any) -> tuple[Any, TimedTokenizers]:
    """The HTTP door over one `tok` deployment (its model's real tokenizer) and no replica."""
    table = DeploymentTable()
    table.put_deployment(deploy_pb2.DeploymentRecord(
        id="tok-v1", model="tok", status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE,
        spec=deploy_pb2.DeploymentSpec(engine="sim", model_path=str(tiny_model),
                                       queue_limit=4, queue_timeout_s=0.5)))
    dispatcher = Dispatcher(Fleet(), PrefixIndex(), Channels(), region="local",
                            latency=RegionLatency(), base_policy=PolicyConfig())
    tokenizers = TimedTokenizers()
    return create_app(AppState(table, dispatcher, tokenizers, None, **state)), tokenizers


@pytest.fixture
async def door(tiny_model: Path) -> AsyncIterator[tuple[httpx.AsyncClient, TimedTokenizers]]:
    app, tokenizers = _app(tiny_model, max_body_bytes=64 * 1024)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://router",
                                 timeout=60) as client:
        yield client, tokenizers


async def test_a_body_over_the_limit_gets_413_declared_or_chunked(door) -> None:  # type: ignore[no-untyped-def]
    client, _ = door
    big = {"model": "tok", "prompt": "x" * (65 * 1024)}
    r = await client.post("/v1/completions", json=big)
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "request_too_large"

    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"model": "tok", "prompt": "'
        for _ in range(70):
            yield b"x" * 1024
        yield b'"}'

    r = await client.post("/v1/completions", content=chunks(),
                          headers={"content-type": "application/json"})
    assert r.status_code == 413, r.text
    small = await client.post("/v1/completions", json={"model": "tok", "prompt": "hi"})
    assert small.status_code == 503, small.text  # within the limit: served (no replica here)


async def test_health_answers_while_a_long_prompt_is_tokenized(tiny_model: Path) -> None:
    app, tokenizers = _app(tiny_model)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://router", timeout=120) as client:
        await client.post("/v1/completions", json={"model": "tok", "prompt": "warm up"})
        # ~1.5 MB of text: a second or more of tokenizing on this machine
        long = asyncio.create_task(client.post(
            "/v1/completions", json={"model": "tok", "prompt": "hello world " * 130_000}))
        await asyncio.sleep(0.3)
        health = await client.get("/health")
        answered = time.monotonic()
        await long
    assert health.status_code == 200
    assert len(tokenizers.encoded_at) == 2
    assert answered < tokenizers.encoded_at[1], "/health waited for the tokenizer"


class _BrokenTokenizers(Tokenizers):
    """The real tokenizers, but encode fails as a bug would (not a RouterError)."""

    async def encode(self, dep: deploy_pb2.DeploymentRecord, text: str) -> Any:
        raise RuntimeError("a bug in the door")


async def test_a_bug_is_answered_500_in_the_openai_shape_and_logged_500() -> None:
    table = DeploymentTable()
    table.put_deployment(deploy_pb2.DeploymentRecord(
        id="b-v1", model="b", status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE,
        spec=deploy_pb2.DeploymentSpec(engine="sim")))
    dispatcher = Dispatcher(Fleet(), PrefixIndex(), Channels(), region="local",
                            latency=RegionLatency(), base_policy=PolicyConfig())
    app = create_app(AppState(table, dispatcher, _BrokenTokenizers(0), None))
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://router") as client:
        r = await client.post("/v1/completions", json={"model": "b", "prompt": "hi"})
    assert r.status_code == 500
    assert r.json() == {"error": {"message": "internal error", "type": "server_error",
                                  "param": None, "code": "internal_error"}}

    entries: list[AccessEntry] = []

    async def broken(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("a bug behind the key check")

    door = KeyAuth(broken, None, KeyLimits(), lambda e: JSONResponse(e.body()),
                   access=entries.append)
    scope = {"type": "http", "method": "POST", "path": "/v1/completions",
             "headers": [(b"x-request-id", b"bug-1")]}
    with pytest.raises(RuntimeError):
        await door(scope, _no_body, _discard)
    assert [(e.request_id, e.status, e.outcome, e.error) for e in entries] == [
        ("bug-1", 500, "error", "internal_error")]


async def _no_body() -> dict[str, Any]:
    return {"type": "http.request", "body": b"", "more_body": False}


async def _discard(message: dict[str, Any]) -> None:
    return None
