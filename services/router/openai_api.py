"""OpenAI-compatible HTTP front door and the predict route (does I/O: FastAPI)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from basalt.apikeys import KeyVerifier, allows_model
from basalt.log import bind_request_id, clear_request_id, get_logger
from basalt.pb import runtime_pb2
from services.router.core.deployments import DeploymentTable, Route, is_llm
from services.router.core.errors import (
    BadRequest,
    Forbidden,
    ModelNotFound,
    RouterError,
)
from services.router.core.ratelimit import KeyLimits

from . import metrics
from .access_log import write_access
from .body_limit import DEFAULT_MAX_BODY_BYTES, BodyLimit
from .dispatch import Dispatcher, RequestContext
from .docs_page import add_docs
from .http_errors import add_error_handlers, entry_of, error_response
from .key_auth import KeyAuth
from .openai_types import ChatCompletionRequest, CompletionRequest, _Sampling
from .tokenizers import Tokenizers

log = get_logger(__name__)
FINISH = {runtime_pb2.FINISH_REASON_STOP: "stop", runtime_pb2.FINISH_REASON_LENGTH: "length",
          runtime_pb2.FINISH_REASON_ABORT: "abort"}
DEFAULT_CHAT_MAX_TOKENS = 256
DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions
# No tokenizer makes a token of more characters than this in practice (English averages 4):
# a prompt longer than this many characters per context token cannot fit, and is refused
# before it is tokenized (which costs seconds for megabytes).
MAX_CHARS_PER_TOKEN = 32


@dataclass(slots=True)
class AppState:
    table: DeploymentTable
    dispatcher: Dispatcher
    tokenizers: Tokenizers
    verifier: KeyVerifier | None
    region_header: str = "x-basalt-region"
    session_header: str = "x-session-id"
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    limits: KeyLimits = field(default_factory=KeyLimits)
    # This router worker's index (`--workers`), sent as x-basalt-router-worker; "" alone.
    worker: str = ""
    # One access-log line per request (`--access-log`).
    access_log: bool = True


def create_app(state: AppState) -> FastAPI:
    app = FastAPI(title="basalt router", docs_url=None, redoc_url=None,
                  openapi_url="/openapi.json")
    app.add_middleware(BodyLimit, max_bytes=state.max_body_bytes)  # type: ignore[arg-type]
    # Outermost (added last): the key is checked before the body is read.
    app.add_middleware(KeyAuth, verifier=state.verifier, limits=state.limits,  # type: ignore[arg-type]
                       error=error_response, access=write_access if state.access_log else None)
    add_error_handlers(app)
    add_docs(app)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models(request: Request) -> dict[str, Any]:
        """What chat and completions can serve: active deployments of LLM engines (a python
        model answers POST /v1/models/{name}/predict, so it is not listed here)."""
        rec = request.state.api_key
        data = [{"id": name, "object": "model", "created": 0, "owned_by": owner}
                for name, owner in state.table.model_names(llm=True)
                if rec is None or allows_model(rec, name)]
        return {"object": "list", "data": data}

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, request: Request) -> Response:
        _parsed(request)
        route = _resolve(state, body.model, request=request)
        messages = [{"role": m.role, "content": m.text()} for m in body.messages]
        _check_length(state, route, "messages", sum(len(m["content"]) for m in messages))
        # Off the event loop: a long prompt must not stall every other stream and /health.
        t0 = time.perf_counter()
        prompt = await state.tokenizers.chat(route.deployment, messages)
        metrics.PHASE_TOKENIZE.observe(time.perf_counter() - t0)
        max_tokens = body.max_completion_tokens or body.max_tokens or DEFAULT_CHAT_MAX_TOKENS
        return await _serve(state, request, body, route, prompt, max_tokens, chat=True)

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, request: Request) -> Response:
        _parsed(request)
        route = _resolve(state, body.model, request=request)
        try:
            prompt_in = body.prompt_one()
        except ValueError as e:
            raise BadRequest(str(e)) from None
        _check_length(state, route, "prompt", len(prompt_in))
        t0 = time.perf_counter()
        prompt: Sequence[int] = (await state.tokenizers.encode(route.deployment, prompt_in)
                                 if isinstance(prompt_in, str) else list(prompt_in))
        metrics.PHASE_TOKENIZE.observe(time.perf_counter() - t0)
        if not prompt:
            raise BadRequest("prompt is empty")
        max_tokens = body.max_tokens or DEFAULT_COMPLETION_MAX_TOKENS
        return await _serve(state, request, body, route, prompt, max_tokens, chat=False)

    @app.post("/v1/models/{name}/predict")
    async def predict(name: str, request: Request) -> Response:
        route = _resolve(state, name, llm=False, request=request)
        raw = await request.body()
        try:
            json.loads(raw or b"null")
        except (ValueError, RecursionError) as e:  # RecursionError: nested too deep
            raise BadRequest(f"body is not JSON: {e}") from None
        ctx = _context(state, request)
        stream = state.dispatcher.predict(route, raw, ctx)
        first = await anext(stream)
        headers = {"x-basalt-replica": ctx.replica_id, "x-request-id": ctx.request_id}
        if ctx.access is not None:
            ctx.access.replica = ctx.replica_id
        try:
            second = await anext(stream)
        except StopAsyncIteration:
            return Response(first, media_type="application/json", headers=headers)

        async def lines() -> AsyncGenerator[bytes, None]:
            try:
                yield first + b"\n"
                yield second + b"\n"
                async for item in stream:
                    yield item + b"\n"
            finally:
                await stream.aclose()

        if ctx.access is not None:
            ctx.access.stream = True
        return _Streaming(lines(), stream, media_type="application/x-ndjson", headers=headers)

    return app


def _parsed(request: Request) -> None:
    """The parse phase ends where a handler starts (its body read and validated)."""
    arrived = getattr(request.state, "arrived", None)
    if arrived is not None:
        metrics.PHASE_PARSE.observe(time.perf_counter() - arrived)


def _check_length(state: AppState, route: Route, field_name: str, chars: int) -> None:
    """The cheap check before tokenizing: `chars` characters (or token ids) cannot fit a
    context of the deployment's max_model_len tokens."""
    limit = state.dispatcher.fleet.max_model_len(route.deployment_id)
    if limit and chars > limit * MAX_CHARS_PER_TOKEN:
        raise BadRequest(f"{field_name}: {chars} characters cannot fit the model's context of "
                         f"{limit} tokens")


def _resolve(state: AppState, name: str, llm: bool = True,
             request: Request | None = None) -> Route:
    entry = entry_of(request) if request is not None else None
    if entry is not None:
        entry.model = name
    route = state.table.resolve(name)
    if route is None:
        raise ModelNotFound(name, param="model" if llm else None)
    if entry is not None:
        entry.deployment = route.deployment_id
    rec = request.state.api_key if request is not None else None
    if rec is not None and not allows_model(rec, route.deployment.model):
        raise Forbidden(name)
    if llm and not is_llm(route.deployment):
        raise BadRequest(f"model {name!r} is a python model: POST /v1/models/{name}/predict",
                         param="model")
    if not llm and is_llm(route.deployment):
        raise BadRequest(f"model {name!r} is an LLM: use /v1/chat/completions or /v1/completions")
    return route


def _context(state: AppState, request: Request) -> RequestContext:
    """The dispatcher's view of the request: its id is the access entry's (from
    x-request-id, or made at the door), and the entry receives the request's record."""
    entry = entry_of(request)
    rid = entry.request_id if entry is not None else (
        request.headers.get("x-request-id") or uuid.uuid4().hex)
    bind_request_id(rid)
    return RequestContext(
        request_id=rid,
        client_region=request.headers.get(state.region_header),
        session_key=request.headers.get(state.session_header),
        access=entry,
    )


def _sampling(body: _Sampling, max_tokens: int) -> runtime_pb2.SamplingParams:
    s = runtime_pb2.SamplingParams(max_tokens=max_tokens, stop=body.stop_list(),
                                   ignore_eos=body.ignore_eos)
    if body.temperature is not None:
        s.temperature = body.temperature
    if body.top_p is not None:
        s.top_p = body.top_p
    if body.top_k is not None and body.top_k > 0:
        s.top_k = body.top_k
    if body.seed is not None:
        s.seed = body.seed
    return s


async def _serve(
    state: AppState, request: Request, body: _Sampling, route: Route, prompt: Sequence[int],
    max_tokens: int, chat: bool,
) -> Response:
    ctx = _context(state, request)
    if ctx.access is not None:
        ctx.access.stream = bool(body.stream)
    # Not streamed: the answer is sent whole, so a replica failing part-way is retried.
    stream = state.dispatcher.generate(route, prompt, _sampling(body, max_tokens), ctx,
                                       buffered=not body.stream)
    fmt = _Format(ctx.request_id, body.model, chat)
    try:
        first = await anext(stream)  # errors before the first token become HTTP errors
    except StopAsyncIteration:
        first = runtime_pb2.GenerateResponse()
    finally:
        clear_request_id()
    headers = {"x-basalt-replica": ctx.replica_id, "x-request-id": ctx.request_id}
    if state.worker:
        headers["x-basalt-router-worker"] = state.worker
    if not body.stream:
        return JSONResponse(await fmt.whole(first, stream, len(prompt)), headers=headers)
    include_usage = bool(body.stream_options and body.stream_options.include_usage)
    return _Streaming(fmt.sse(first, stream, include_usage, len(prompt)), stream,
                      media_type="text/event-stream", headers=headers)


class _Streaming(StreamingResponse):
    """A StreamingResponse that closes its body and the dispatcher's stream under it when it
    ends, however it ends. A client that leaves cancels the relay between two chunks, or
    before the first; both are then closed here, at once, not when the garbage collector
    finds them: the request is recorded `cancelled` and its access line written with that
    record, before the response returns."""

    def __init__(self, content: AsyncGenerator[bytes, None], source: AsyncGenerator[Any, None],
                 **kw: Any) -> None:
        super().__init__(content, **kw)
        self.content = content
        self.source = source

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.content.aclose()
            await self.source.aclose()  # (already closed by the content, unless it never ran)


class _Format:
    """Builds OpenAI's JSON bodies and SSE chunks from runtime responses."""

    def __init__(self, request_id: str, model: str, chat: bool) -> None:
        self.id = ("chatcmpl-" if chat else "cmpl-") + request_id
        self.model = model
        self.chat = chat
        self.created = int(time.time())
        self.object = "chat.completion" if chat else "text_completion"
        # A middle chunk (text only, no finish) is this head + the JSON string + this tail:
        # one json.dumps of the text per token instead of the whole body.
        mark = "\x00text\x00"
        whole = self._chunk(mark, None, False)
        at = whole.index(json.dumps(mark).encode())
        self._head, self._tail = whole[:at], whole[at + len(json.dumps(mark)):]

    def _usage(self, resp: runtime_pb2.GenerateResponse, prompt_len: int, completion: int) -> dict:
        u = resp.usage
        prompt_tokens = u.prompt_tokens or prompt_len
        completion_tokens = u.completion_tokens or completion
        return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
                "prompt_tokens_details": {"cached_tokens": u.cached_prompt_tokens}}

    async def whole(self, first, stream, prompt_len: int) -> dict:  # type: ignore[no-untyped-def]
        text, last, n = [first.text], first, len(first.token_ids)
        async for resp in stream:
            text.append(resp.text)
            n += len(resp.token_ids)
            last = resp
        finish = FINISH.get(last.finish_reason)
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish, "logprobs": None}
        if self.chat:
            choice["message"] = {"role": "assistant", "content": "".join(text)}
        else:
            choice["text"] = "".join(text)
        return {"id": self.id, "object": self.object, "created": self.created,
                "model": self.model, "choices": [choice], "usage": self._usage(last, prompt_len, n)}

    def _chunk(self, text: str, finish: str | None, first: bool) -> bytes:
        if self.chat:
            delta: dict[str, Any] = {"content": text}
            if first:
                delta["role"] = "assistant"
            choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
            obj = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "finish_reason": finish, "logprobs": None}
            obj = "text_completion"
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [choice]}
        return b"data: " + json.dumps(body).encode() + b"\n\n"

    def _middle(self, text: str) -> bytes:
        """`_chunk(text, None, False)`, from the parts built once."""
        return self._head + json.dumps(text).encode() + self._tail

    async def sse(
        self, first: runtime_pb2.GenerateResponse,
        stream: AsyncGenerator[runtime_pb2.GenerateResponse, None], include_usage: bool,
        prompt_len: int,
    ) -> AsyncGenerator[bytes, None]:
        last, n = first, len(first.token_ids)
        relay = metrics.PHASE_RELAY
        # The chunk carrying the finish reason is the replica's last: it goes out with the
        # usage chunk and [DONE] in one write, not three.
        held = b""
        try:
            chunk = self._chunk(first.text, FINISH.get(first.finish_reason), True)
            if first.finish_reason:
                held = chunk
            else:
                yield chunk
            async for resp in stream:
                got = time.perf_counter()
                n += len(resp.token_ids)
                finish = FINISH.get(resp.finish_reason)
                if held:  # (nothing follows a finish; should something, it is not held back)
                    yield held
                    held = b""
                if finish is None:
                    chunk = self._middle(resp.text)
                else:
                    held = self._chunk(resp.text, finish, False)
                relay.observe(time.perf_counter() - got)
                last = resp
                if finish is None:
                    yield chunk
        except RouterError as e:
            log.warning("stream_failed", error=e.message)
            yield held + b"data: " + json.dumps(e.body()).encode() + b"\n\ndata: [DONE]\n\n"
            return
        finally:  # a client that left closes this at a yield: close the dispatcher's stream
            await stream.aclose()
        tail = [held]
        if include_usage:
            obj = "chat.completion.chunk" if self.chat else "text_completion"
            body: dict[str, Any] = {
                "id": self.id, "object": obj, "created": self.created, "model": self.model,
                "choices": [],
                "usage": self._usage(last, prompt_len, n),
            }
            tail.append(b"data: " + json.dumps(body).encode() + b"\n\n")
        tail.append(b"data: [DONE]\n\n")
        yield b"".join(tail)
