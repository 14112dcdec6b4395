"""`SimEngine`: the vLLM simulator behind the runtime's `Engine` protocol (asyncio adapter; its
only I/O is sleeping on the event loop's clock).

A background task drives a `SimReplicaCore`: take the next step, sleep until it ends (real
time, or scaled by `SimConfig.time_scale`: 0.01 runs 100x faster), then hand each request its
token and each finish to the request's queue, and the step's KV events to `kv_events()`. With
no work it waits on an event (no busy loop). The core never sleeps; simulated time inside it
is (loop time since start) / time_scale.

What a simulator does not do: sampling parameters other than max_tokens and stop_token_ids
are validated and then ignored (outputs are deterministic, see sequence.py); stop strings are
ignored; there is no EOS. LoRA adapters are names only (no weights; the path is ignored), and
the name enters the block hashes. `text` is `decode(new token ids)` when a decode callable is
given, else "".

Usage:
    engine = SimEngine(SimConfig(time_scale=0.01), decode=tokenizer.decode)
    info = await engine.start()
    async for chunk in engine.generate(GenerateInput("r1", prompt_ids, SamplingParams(64))):
        ...
    await engine.shutdown()
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from basalt.ids import RequestId
from basalt.kvevents import KvEvent
from basalt.log import get_logger
from services.runtime.core.engine import (
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    Usage,
)
from services.runtime.core.errors import Draining, NotSupported, UnknownLora
from services.runtime.core.request_phases import mark_engine_accepted
from services.runtime.engines.sim.core.config import SimConfig
from services.runtime.engines.sim.core.errors import DuplicateRequest
from services.runtime.engines.sim.core.replica import (
    FinishedRequest,
    SimReplicaCore,
    StepResult,
    validate_request,
)

__all__ = ["SimConfig", "SimEngine"]

log = get_logger(__name__)

_Item = int | FinishedRequest  # a token, or the request's end


class SimEngine:
    """One simulated vLLM replica, served on the asyncio loop it was started on."""

    kind = "sim"
    # generate() hands over every token queued since the last read in one chunk: the server
    # reads it directly, no pump (services/runtime/pump.py).
    merges_outputs = True

    def __init__(self, config: SimConfig, decode: Callable[[list[int]], str] | None = None) -> None:
        self.config = config
        self.core = SimReplicaCore(config)
        self._decode = decode
        self._loras: set[str] = set()
        self._streams: dict[str, asyncio.Queue[_Item]] = {}
        self._events: asyncio.Queue[list[KvEvent] | None] = asyncio.Queue()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._t0 = 0.0
        self._closed = False
        self._failed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> EngineInfo:
        if self._task is None:
            self._t0 = asyncio.get_running_loop().time()
            self._task = asyncio.create_task(self._run(), name="sim-engine-steps")
            log.info(
                "vLLM simulator started",
                model=self.config.model_name,
                num_blocks=self.config.num_blocks,
                profile=self.config.profile.name,
                time_scale=self.config.time_scale,
            )
        return EngineInfo(
            model=self.config.model_name,
            kv_block_size=self.config.block_size,
            kv_blocks_total=self.config.num_blocks,
            max_model_len=self.config.max_model_len,
        )

    async def shutdown(self) -> None:
        """Stop the step loop; requests still in flight end with finish reason ABORT."""
        if self._closed:
            return
        self._closed = True
        for rid in list(self._streams):
            await self.abort(rid)
        task = self._task
        if task is not None and not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        elif task is not None and not task.cancelled():
            task.exception()  # a failed loop: already logged; mark the exception retrieved
        self._events.put_nowait(None)
        log.info("vLLM simulator stopped", model=self.config.model_name)

    # -- the step loop ---------------------------------------------------------------------

    def _now(self) -> float:
        """Simulated seconds since start."""
        return (asyncio.get_running_loop().time() - self._t0) / self.config.time_scale

    async def _run(self) -> None:
        try:
            await self._step_loop()
        except Exception:
            log.exception("vLLM simulator step loop failed; aborting requests in flight")
            self._failed = True
            for rid in list(self._streams):
                if not await self.abort(rid):  # the core lost it: end the stream regardless
                    lost = FinishedRequest(
                        RequestId(rid), FinishReason.ABORT, 0, 0, 0, 0.0, None, 0.0, 0
                    )
                    self._streams.pop(rid).put_nowait(lost)
            raise

    async def _step_loop(self) -> None:
        core, scale = self.core, self.config.time_scale
        loop = asyncio.get_running_loop()
        busy_until = 0.0
        while True:
            if not core.has_work:
                self._wake.clear()
                await self._wake.wait()
                continue
            result = core.step(max(self._now(), busy_until))
            busy_until = result.end
            # Sleep to the step's end on the loop clock, not for its duration: no drift.
            await asyncio.sleep(max(0.0, self._t0 + busy_until * scale - loop.time()))
            self._deliver(result)

    def _deliver(self, result: StepResult) -> None:
        streams = self._streams
        for rid, token in result.tokens.items():
            queue = streams.get(rid)
            if queue is not None:
                queue.put_nowait(token)
        for fin in result.finished:
            queue = streams.get(fin.req_id)
            if queue is not None:
                queue.put_nowait(fin)
        if result.kv_events:
            self._events.put_nowait(result.kv_events)

    # -- requests --------------------------------------------------------------------------

    def _validate(self, req: GenerateInput) -> None:
        if self._closed:
            raise Draining("the simulator is shut down")
        if self._task is None:
            raise RuntimeError("SimEngine.start() must be awaited before generate()")
        if self._failed:
            raise RuntimeError("the simulator's step loop failed (see the log)")
        req.sampling.validate()
        validate_request(self.config, req.prompt_token_ids, req.sampling.max_tokens)
        if req.lora_name and req.lora_name not in self._loras:
            raise UnknownLora(req.lora_name, sorted(self._loras))
        if req.request_id in self._streams:
            raise DuplicateRequest(req.request_id)

    async def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        """Stream chunks. Bad input raises InvalidRequest (or a subclass) on the first
        iteration, before any chunk and before the request reaches the core."""
        self._validate(req)
        rid = req.request_id
        queue: asyncio.Queue[_Item] = asyncio.Queue()
        self.core.add_request(
            rid,
            req.prompt_token_ids,
            req.sampling.max_tokens,
            lora_name=req.lora_name,
            now=self._now(),
            stop_token_ids=req.sampling.stop_token_ids,
        )
        self._streams[rid] = queue
        self._wake.set()
        mark_engine_accepted()
        finished = False
        try:
            while not finished:
                items = [await queue.get()]
                while not queue.empty():
                    items.append(queue.get_nowait())
                chunk = self._chunk(items)
                finished = chunk.finish_reason is not None
                yield chunk
        finally:
            if self._streams.get(rid) is queue:  # not detached by abort() or shutdown()
                del self._streams[rid]
                if not finished:  # the client went away: free the sequence's blocks
                    self.core.abort(rid, now=self._now())

    def _chunk(self, items: list[_Item]) -> GenerateChunk:
        tokens = [i for i in items if isinstance(i, int)]
        chunk = GenerateChunk(token_ids=tokens, text=self._decode(tokens) if self._decode else "")
        for item in items:
            if isinstance(item, FinishedRequest):
                chunk.finish_reason = item.finish_reason
                chunk.usage = Usage(
                    prompt_tokens=item.prompt_tokens,
                    completion_tokens=item.completion_tokens,
                    cached_prompt_tokens=item.num_cached_tokens,
                )
        return chunk

    async def abort(self, request_id: str) -> bool:
        """End a request now (its stream gets finish reason ABORT); False when not in flight."""
        fin = self.core.abort(request_id, now=self._now())
        if fin is None:
            return False
        # Detach the stream so tokens of a step already in flight do not follow the end.
        queue = self._streams.pop(request_id, None)
        if queue is not None:
            queue.put_nowait(fin)
        return True

    async def kv_events(self) -> AsyncIterator[list[KvEvent]]:
        """Each step's KV events, in order, until shutdown. Meant for one consumer: batches
        are queued (unbounded) from start, so nothing is lost before the consumer arrives."""
        while True:
            batch = await self._events.get()
            if batch is None:
                self._events.put_nowait(None)  # let a later consumer end too
                return
            yield batch

    # -- state, LoRA, predict --------------------------------------------------------------

    def stats(self) -> EngineStats:
        s = self.core.stats()
        return EngineStats(
            num_running=s.num_running,
            num_waiting=s.num_waiting,
            kv_blocks_active=s.kv_blocks_active,
            kv_blocks_total=s.kv_blocks_total,
        )

    def loras(self) -> list[str]:
        return sorted(self._loras)

    async def load_lora(self, name: str, path: str) -> None:
        """Track the adapter's name after `lora_load_s` simulated seconds; the path is unused."""
        if name in self._loras:
            return
        if self.config.lora_load_s > 0:
            await asyncio.sleep(self.config.lora_load_s * self.config.time_scale)
        self._loras.add(name)

    async def unload_lora(self, name: str) -> None:
        """Forget the adapter; requests already running with it finish normally."""
        if name not in self._loras:
            raise UnknownLora(name, sorted(self._loras))
        self._loras.discard(name)

    def predict(self, payload: Any) -> AsyncGenerator[Any, None]:
        raise NotSupported(
            "the sim engine simulates an LLM: Predict is not supported, use Generate"
        )
