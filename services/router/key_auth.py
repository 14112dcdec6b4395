"""The OpenAI door's API-key check and per-key limits, as plain ASGI middleware (does I/O).

Plain ASGI, not Starlette's `BaseHTTPMiddleware`: that one relays every streamed chunk
through a memory stream and a task of its own, which cost the router about a sixth of its CPU
per streamed request. This one only looks at the headers, then passes `receive` and `send`
through untouched. It is the outermost layer, so it also stamps the request's arrival time
(`request.state.arrived`, the start of the `parse` phase), starts the request's access-log
entry (`request.state.access`: its id, from `x-request-id` or made here) and, once the
response has been sent, hands it to `access` (the one log call per request; none for
/health, which probes call every few seconds).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from basalt.apikeys import KeyStoreUnavailable, KeyVerifier, key_from_header
from services.router.core.access import AccessEntry
from services.router.core.errors import AuthUnavailable, RouterError, Unauthorized
from services.router.core.ratelimit import KeyLimits

OPEN_PATHS = ("/health",)
# Paths no access line is written for.
QUIET_PATHS = ("/health",)


class KeyAuth:
    """Every route but `OPEN_PATHS` needs an inference key; a key over its rate or
    concurrency is refused (429). The key's record lands in `request.state.api_key` (None
    with no verifier), and its concurrency slot is released when the response has been sent
    (a stream's last chunk, or the client leaving)."""

    def __init__(self, app: ASGIApp, verifier: KeyVerifier | None, limits: KeyLimits,
                 error: Callable[[RouterError], JSONResponse],
                 access: Callable[[AccessEntry], None] | None = None) -> None:
        self.app = app
        self.verifier = verifier
        self.limits = limits
        self.error = error
        self.access = access

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        arrived = time.perf_counter()
        header = rid = None
        for k, v in scope["headers"]:
            if k == b"authorization":
                header = v
            elif k == b"x-request-id":
                rid = v
        entry = AccessEntry(rid.decode("latin-1") if rid else uuid.uuid4().hex,
                            scope["method"], scope["path"], arrived)
        state = scope.setdefault("state", {})
        state["arrived"] = arrived
        state["api_key"] = None
        state["access"] = entry
        try:  # one coroutine, no layer of its own: this is every request's path
            if self.verifier is None or scope["path"] in OPEN_PATHS:
                await self.app(scope, receive, send)
                return
            key = key_from_header(header.decode("latin-1") if header is not None else None)
            try:
                rec = await self.verifier.verify(key)
            except KeyStoreUnavailable as e:
                await self._refuse(AuthUnavailable(str(e)), entry, scope, receive, send)
                return
            if rec is None:
                await self._refuse(Unauthorized("missing, invalid or expired API key (an "
                                                "inference key is needed here)"),
                                   entry, scope, receive, send)
                return
            entry.key_id = rec.key_id
            over = self.limits.refusal(rec.key_id, rec.rate_per_s, rec.max_concurrency,
                                       time.monotonic())
            if over is not None:
                await self._refuse(over, entry, scope, receive, send)
                return
            state["api_key"] = rec
            try:
                await self.app(scope, receive, send)
            finally:
                self.limits.release(rec.key_id)
        except Exception:  # answered 500 by the app's outermost handler, after this layer
            entry.refused(500, code="internal_error")
            raise
        finally:
            if self.access is not None and entry.route not in QUIET_PATHS:
                self.access(entry)

    async def _refuse(self, e: RouterError, entry: AccessEntry, scope: Scope, receive: Receive,
                      send: Send) -> None:
        response = self.error(e)
        entry.refused(response.status_code, e)
        await response(scope, receive, send)
