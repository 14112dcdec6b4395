"""What both KServe v2 servicers (runtime, router) share, as asyncio helpers (no I/O of its own).

ModelStreamInfer's requests run concurrently on one stream, a response stream is closed when no
longer read, a failed request is logged. It does not load basalt.pb.kserve_pb2.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import grpc

from basalt.log import get_logger

log = get_logger(__name__)

Req = TypeVar("Req")
Resp = TypeVar("Resp")


async def interleave(
    requests: AsyncIterator[Req],
    handle: Callable[[Req, Callable[[Resp], None]], Coroutine[Any, Any, None]],
    max_in_flight: int = 64,
) -> AsyncGenerator[Resp, None]:
    """Run `handle(request, emit)` as a task for each request as it arrives; yield what the
    handlers emit, in the order they emit it, until the requests end and every handler is done.
    At most `max_in_flight` handlers run at once: the next request is read only when one ends
    (backpressure on the stream, so one connection cannot start unbounded work).
    Closing (or cancelling) this generator cancels the reader and every handler."""
    queue: asyncio.Queue[Resp | None] = asyncio.Queue()
    tasks: set[asyncio.Task[None]] = set()

    async def read() -> None:
        try:
            async for req in requests:
                while len(tasks) >= max_in_flight:
                    await asyncio.wait(set(tasks), return_when=asyncio.FIRST_COMPLETED)
                task = asyncio.create_task(handle(req, queue.put_nowait))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.wait(set(tasks))
        finally:
            queue.put_nowait(None)

    reader = asyncio.create_task(read())
    try:
        while (resp := await queue.get()) is not None:
            yield resp
    finally:
        for task in (reader, *tasks):
            task.cancel()


@asynccontextmanager
async def closing_stream(items: AsyncIterator[Any]) -> AsyncIterator[AsyncIterator[Any]]:
    """Close `items` (if it can be closed) when we stop reading it: an engine's stream aborts
    its sequence, a dispatcher's stream cancels its replica call."""
    try:
        yield items
    finally:
        aclose = getattr(items, "aclose", None)
        if aclose is not None:
            await aclose()


def log_failure(request_id: str, code: grpc.StatusCode, message: str,
                error: BaseException | None = None) -> None:
    """A failed request: a warning when it is our fault (INTERNAL), else info. The exception's
    own text goes to the log only, never to the client (`INTERNAL_MESSAGE`)."""
    level = log.warning if code is grpc.StatusCode.INTERNAL else log.info
    detail = f"{type(error).__name__}: {error}" if error is not None else None
    level("kserve_request_failed", id=request_id, code=code.name, error=message, detail=detail)


# What a client is told of a failure the server did not expect; the log has the exception.
INTERNAL_MESSAGE = "internal error; the service's log has the details (search for the request id)"


def refusing(handler: grpc.RpcMethodHandler, code: grpc.StatusCode,
             message: str) -> grpc.RpcMethodHandler:
    """A handler of the same shape as `handler` that ends the call with `code` and
    `message`, doing nothing: what a server interceptor returns to refuse a call."""

    async def refuse(_request: Any, context: grpc.aio.ServicerContext) -> None:
        await context.abort(code, message)

    kw = {"request_deserializer": handler.request_deserializer,
          "response_serializer": handler.response_serializer}
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(refuse, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(refuse, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(refuse, **kw)
    return grpc.stream_stream_rpc_method_handler(refuse, **kw)
