"""Every error of the HTTP door in OpenAI's shape, `{"error": {message, type, param, code}}`
(does I/O: FastAPI exception handlers).

The router's own errors (`core/errors.py`, statuses from `status_codes.py`), FastAPI's own
refusals (no such route 404, wrong method 405, a body it cannot read or validate 400) and a
bug (500) all answer in that shape; the key check (`key_auth.py`) and the body limit
(`body_limit.py`) answer in it too. Each handler also notes the status and the error's code
on the request's access-log entry.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.router.core.access import AccessEntry
from services.router.core.errors import BadRequest, QueueFull, RateLimited, RouterError
from services.router.core.ratelimit import retry_after_header
from services.router.status_codes import http_status

# FastAPI's own refusals, by status: their OpenAI error code.
HTTP_CODES = {404: "not_found", 405: "method_not_allowed", 413: "request_too_large"}
INTERNAL = {"error": {"message": "internal error", "type": "server_error", "param": None,
                      "code": "internal_error"}}


def error_response(e: RouterError) -> JSONResponse:
    """`e` as its HTTP status and body (with Retry-After where a retry can succeed)."""
    headers = ({"retry-after": retry_after_header(e.retry_after_s)}
               if isinstance(e, RateLimited | QueueFull) else None)
    return JSONResponse(e.body(), status_code=http_status(e), headers=headers)


def entry_of(request: Request) -> AccessEntry | None:
    """The request's access-log entry (KeyAuth starts one for every HTTP request)."""
    return getattr(request.state, "access", None)


def refused(request: Request, e: RouterError) -> JSONResponse:
    response = error_response(e)
    if (entry := entry_of(request)) is not None:
        entry.refused(response.status_code, e)
    return response


def validation_error(errors: Sequence[Any]) -> BadRequest:
    """A body FastAPI could not read or validate, as one 400 naming the fields at fault
    (`param`: the first)."""
    parts, fields = [], []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        if err.get("type") == "json_invalid":
            at = f" at character {loc[0]}" if loc else ""
            parts.append(f"request body is not valid JSON{at}: "
                         f"{err.get('ctx', {}).get('error', err.get('msg'))}")
            continue
        name = ".".join(loc)
        fields.append(name)
        parts.append(f"{name or 'body'}: {err.get('msg')}")
    return BadRequest("; ".join(parts) or "invalid request body",
                      param=next((f for f in fields if f), None))


def add_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RouterError)
    async def _router_error(request: Request, e: RouterError) -> JSONResponse:
        return refused(request, e)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        """FastAPI's own refusals (no such route or method) with their status."""
        kind = "invalid_request_error" if e.status_code < 500 else "server_error"
        code = HTTP_CODES.get(e.status_code)
        body = {"error": {"message": str(e.detail), "type": kind, "param": None, "code": code}}
        if (entry := entry_of(request)) is not None:
            entry.refused(e.status_code, code=code)
        return JSONResponse(body, status_code=e.status_code, headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        return refused(request, validation_error(e.errors()))

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, e: Exception) -> JSONResponse:
        """A bug, still in the OpenAI shape (the traceback goes to the log as before; KeyAuth,
        which this answers outside of, has noted the 500 on the access entry)."""
        return JSONResponse(INTERNAL, status_code=500)
