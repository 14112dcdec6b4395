"""A request body limit for the HTTP door (an ASGI middleware; does I/O): a body over the limit
is answered 413 in the OpenAI error shape before any of it is parsed, whether the client
declared its length or streamed it in chunks."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]

DEFAULT_MAX_BODY_BYTES = 8 * 2**20


def too_large_body(limit: int) -> bytes:
    return json.dumps({"error": {
        "message": f"request body is larger than {limit} bytes", "type": "invalid_request_error",
        "param": None, "code": "request_too_large"}}).encode()


class BodyLimit:
    def __init__(self, app: App, max_bytes: int = DEFAULT_MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or ()).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(scope, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:  # read the body here, within the limit; the app gets it replayed
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left: let the app see the disconnect
            size += len(message.get("body", b""))
            if size > self.max_bytes:
                await self._refuse(scope, send)
                return
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                message = {"type": "http.request", "body": b"".join(chunks), "more_body": False}
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return message
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, send: Send) -> None:
        entry = scope.get("state", {}).get("access")
        if entry is not None:  # the access-log entry KeyAuth started (outside this layer)
            entry.refused(413, code="request_too_large")
        body = too_large_body(self.max_bytes)
        await send({"type": "http.response.start", "status": 413, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
