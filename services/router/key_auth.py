"""The OpenAI door's API-key check and per-key limits, as plain ASGI middleware (does I/O).

Plain ASGI, not Starlette's `BaseHTTPMiddleware`: that one relays every streamed chunk
through a memory stream and a task of its own, which cost the router about a sixth of its CPU
per streamed request. This one only looks at the headers, then passes `receive` and `send`
through untouched. It is the outermost layer, so it also stamps the request's arrival time
(`request.state.arrived`, the start of the `parse` phase).
"""

from __future__ import annotations

import time
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from basalt.apikeys import KeyStoreUnavailable, KeyVerifier, key_from_header
from services.router.core.errors import AuthUnavailable, RouterError, Unauthorized
from services.router.core.ratelimit import KeyLimits

OPEN_PATHS = ("/health",)


class KeyAuth:
    """Every route but `OPEN_PATHS` needs an inference key; a key over its rate or
    concurrency is refused (429). The key's record lands in `request.state.api_key` (None
    with no verifier), and its concurrency slot is released when the response has been sent
    (a stream's last chunk, or the client leaving)."""

    def __init__(self, app: ASGIApp, verifier: KeyVerifier | None, limits: KeyLimits,
                 error: Callable[[RouterError], JSONResponse]) -> None:
        self.app = app
        self.verifier = verifier
        self.limits = limits
        self.error = error

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        state["arrived"] = time.perf_counter()
        state["api_key"] = None
        if self.verifier is None or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        header = next((v for k, v in scope["headers"] if k == b"authorization"), None)
        key = key_from_header(header.decode("latin-1") if header is not None else None)
        try:
            rec = await self.verifier.verify(key)
        except KeyStoreUnavailable as e:
            await self.error(AuthUnavailable(str(e)))(scope, receive, send)
            return
        if rec is None:
            await self.error(Unauthorized("missing, invalid or expired API key (an inference "
                                          "key is needed here)"))(scope, receive, send)
            return
        over = self.limits.refusal(rec.key_id, rec.rate_per_s, rec.max_concurrency,
                                   time.monotonic())
        if over is not None:
            await self.error(over)(scope, receive, send)
            return
        state["api_key"] = rec
        try:
            await self.app(scope, receive, send)
        finally:
            self.limits.release(rec.key_id)
