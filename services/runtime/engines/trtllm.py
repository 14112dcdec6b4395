"""The trtllm engine: TensorRT-LLM's LLM API behind the Engine protocol (does I/O: GPU).

UNVERIFIED. This adapter is written against TensorRT-LLM's documented LLM API (`tensorrt_llm.LLM`,
`generate_async(..., streaming=True)`, `SamplingParams`, `KvCacheConfig(enable_block_reuse=True,
event_buffer_max_size=...)`, `get_kv_cache_events_async`, `get_stats_async`, `LoRARequest`) but
has never run: the machine it was written on has no GPU and TensorRT-LLM cannot be installed
there. Only its pure parts are tested (KV-event and stats conversion, sampling mapping) and that
starting it without TensorRT-LLM fails clearly. Run it on a GPU host with TensorRT-LLM before
trusting it. `tensorrt_llm` is imported lazily, in `start()`, so this module imports anywhere.

Settings (`llm_settings`, equally UNVERIFIED): the deployment's own TensorRT-LLM settings
(`TrtllmConfig.extra_llm_kwargs`, from --engine-settings-json: any `LLM(...)` / `LlmArgs`
argument under TensorRT-LLM's names, e.g. tensor_parallel_size, backend, speculative_config,
kv_cache_config: {host_cache_size: ...}) pass through; basalt owns the model, max_seq_len and
max_batch_size (the runtime's max_model_len and max_num_seqs) and, inside kv_cache_config,
enable_block_reuse (prefix caching) and event_buffer_max_size (its KV events). Dict-valued
settings become TensorRT-LLM's config classes through its own
`update_llm_args_with_extra_dict`, as `trtllm-serve --extra_llm_api_options` does.

KV events: TensorRT-LLM reports `created`, `stored`, `removed` and `updated` events (see
`KVCacheEventSerializer` in tensorrt_llm/_utils.py). `stored` -> BlockStored (full blocks only;
partial blocks are held back, and their later removal is dropped, as Dynamo's publisher does),
`removed` -> BlockRemoved, `created` (the cache was (re)built, so it is empty) -> AllBlocksCleared,
`updated` (priority or cache level changed; the block stays) -> nothing. TensorRT-LLM has no
all-blocks-cleared event of its own.
"""

from __future__ import annotations

import asyncio
import importlib
import json
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from basalt.kvevents import AllBlocksCleared, BlockRemoved, BlockStored, KvEvent
from basalt.log import get_logger
from services.runtime.core.engine import (
    EngineInfo,
    EngineStats,
    FinishReason,
    GenerateChunk,
    GenerateInput,
    SamplingParams,
    Usage,
)
from services.runtime.core.errors import (
    InvalidRequest,
    NotSupported,
    PromptTooLong,
    TensorRtLlmMissing,
    UnknownLora,
)

log = get_logger(__name__)


@dataclass(slots=True)
class TrtllmConfig:
    """What the engine passes to `tensorrt_llm.LLM`; None leaves TensorRT-LLM's default."""

    block_size: int = 32  # must equal the engine's tokens_per_block (TensorRT-LLM default: 32)
    max_model_len: int | None = None  # max_seq_len
    max_num_seqs: int | None = None  # max_batch_size
    gpu_memory_fraction: float | None = None  # KvCacheConfig.free_gpu_memory_fraction
    event_buffer_max_size: int = 16384
    max_loras: int = 0  # 0: LoRA off (TensorRT-LLM needs LoRA sized when the LLM is built)
    stats_timeout_s: float = 2.0
    # The deployment's own LLM(...) arguments, TensorRT-LLM's names (e.g. backend="pytorch").
    extra_llm_kwargs: dict[str, Any] = field(default_factory=dict)


# TensorRT-LLM sizes LoRA when the LLM is built; a deployment's lora_config overrides this.
DEFAULT_MAX_LORA_RANK = 64


def llm_settings(model: str, c: TrtllmConfig) -> dict[str, Any]:
    """Every `LLM(...)` argument, TensorRT-LLM's names, sub-configs as dicts: the
    deployment's own settings under what basalt owns (pure; UNVERIFIED against TensorRT-LLM)."""
    own = dict(c.extra_llm_kwargs)
    kv: dict[str, Any] = dict(own.pop("kv_cache_config", None) or {})
    if c.gpu_memory_fraction is not None:
        kv["free_gpu_memory_fraction"] = c.gpu_memory_fraction
    kv.update(enable_block_reuse=True, event_buffer_max_size=c.event_buffer_max_size)
    out: dict[str, Any] = {**own, "model": model, "kv_cache_config": kv}
    if c.max_model_len is not None:
        out["max_seq_len"] = c.max_model_len
    if c.max_num_seqs is not None:
        out["max_batch_size"] = c.max_num_seqs
    if c.max_loras > 0:
        out["lora_config"] = {"max_lora_rank": DEFAULT_MAX_LORA_RANK, "max_loras": c.max_loras,
                              "max_cpu_loras": c.max_loras, **(own.get("lora_config") or {})}
    return out


# ---- pure conversions (tested here) ----------------------------------------------------------


class KvEventConverter:
    """TensorRT-LLM KV-event dicts -> basalt.kvevents, remembering partial blocks (pure)."""

    def __init__(self, block_size: int, lora_names: Callable[[int], str | None] = lambda _: None):
        self.block_size = block_size
        self.lora_names = lora_names
        self.partial: set[int] = set()

    def convert(self, event: dict[str, Any] | str) -> list[KvEvent]:
        doc: dict[str, Any] = (
            json.loads(event) if isinstance(event, str) else event
        )  # JSON text too
        data = doc.get("data", doc)
        kind = data.get("type")
        if kind == "stored":
            return self._stored(data)
        if kind == "removed":
            hashes = [h for h in data["block_hashes"] if h not in self.partial]
            self.partial.difference_update(data["block_hashes"])
            return [BlockRemoved(block_hashes=hashes)] if hashes else []
        if kind == "created":
            self.partial.clear()
            return [AllBlocksCleared()]
        return []  # "updated" and anything newer: no change to which blocks exist

    def _stored(self, data: dict[str, Any]) -> list[KvEvent]:
        hashes: list[int] = []
        tokens: list[int] = []
        lora_id = data.get("lora_id")
        for block in data["blocks"]:
            ids = [int(t["token_id"]) for t in block["tokens"]]
            if len(ids) > self.block_size:
                raise ValueError(
                    f"stored block {block['block_hash']} has {len(ids)} tokens, more than the "
                    f"block size {self.block_size}: is block_size the engine's tokens_per_block?"
                )
            if len(ids) < self.block_size:  # a partial (last) block: not reusable yet
                self.partial.add(block["block_hash"])
                break
            hashes.append(block["block_hash"])
            tokens.extend(ids)
            lora_id = lora_id or block.get("lora_id")
        if not hashes:
            return []
        return [
            BlockStored(
                block_hashes=hashes,
                parent_block_hash=data.get("parent_hash"),
                token_ids=tokens,
                block_size=self.block_size,
                lora_name=self.lora_names(lora_id) if lora_id else None,
            )
        ]


@dataclass(slots=True, frozen=True)
class IterationLoad:
    num_running: int
    num_waiting: int
    kv_blocks_active: int
    kv_blocks_total: int


def load_from_iteration_stats(stat: dict[str, Any] | str) -> IterationLoad | None:
    """One `get_stats` entry -> load numbers; None when it carries no KV-cache stats."""
    doc: dict[str, Any] = json.loads(stat) if isinstance(stat, str) else stat
    kv = doc.get("kvCacheStats")
    if not kv or "maxNumBlocks" not in kv:
        return None
    used = kv.get("usedNumBlocks", kv.get("allocTotalBlocks", 0))
    return IterationLoad(
        num_running=int(doc.get("numActiveRequests", 0)),
        num_waiting=int(doc.get("numQueuedRequests", 0)),
        kv_blocks_active=int(used),
        kv_blocks_total=int(kv["maxNumBlocks"]),
    )


def sampling_kwargs(s: SamplingParams) -> dict[str, Any]:
    """basalt SamplingParams -> tensorrt_llm.SamplingParams keyword arguments."""
    kwargs: dict[str, Any] = {
        "max_tokens": s.max_tokens,
        "top_p": s.top_p,
        "ignore_eos": s.ignore_eos,
        "detokenize": True,
    }
    if s.temperature == 0.0:  # greedy: TensorRT-LLM wants temperature > 0, so take top-1
        kwargs["top_k"] = 1
    else:
        kwargs["temperature"] = s.temperature
        if s.top_k > 0:
            kwargs["top_k"] = s.top_k
    if s.seed is not None:
        kwargs["seed"] = s.seed
    if s.stop:
        kwargs["stop"] = list(s.stop)
    if s.stop_token_ids:
        kwargs["stop_token_ids"] = list(s.stop_token_ids)
    return kwargs


_FINISH = {"stop": FinishReason.STOP, "length": FinishReason.LENGTH}


def finish_reason(trt_reason: str | None, finished: bool) -> FinishReason | None:
    """TensorRT-LLM's finish_reason ("stop", "length", "cancelled", "timeout") -> ours."""
    if trt_reason is None:
        return FinishReason.STOP if finished else None
    return _FINISH.get(trt_reason, FinishReason.ABORT)


def import_tensorrt_llm() -> Any:
    try:
        return importlib.import_module("tensorrt_llm")
    except Exception as e:  # ImportError, or a CUDA library failing to load
        raise TensorRtLlmMissing("tensorrt_llm", f"{type(e).__name__}: {e}") from e


# ---- the adapter (unverified: needs a GPU and TensorRT-LLM) ----------------------------------


class TrtllmEngine:
    """One model in TensorRT-LLM's LLM API."""

    kind = "trtllm"

    def __init__(self, model: str, model_name: str, config: TrtllmConfig | None = None) -> None:
        self.model = model
        self.model_name = model_name
        self.config = config or TrtllmConfig()
        self._trt: Any = None
        self._llm: Any = None
        self._running: dict[str, Any] = {}  # request id -> RequestOutput
        self._loras: dict[str, Any] = {}  # name -> LoRARequest
        self._lora_ids: dict[int, str] = {}
        self._load = IterationLoad(0, 0, 0, 0)
        self._closed = asyncio.Event()
        self._stats_task: asyncio.Task[None] | None = None

    async def start(self) -> EngineInfo:
        trt = import_tensorrt_llm()
        self._trt = trt
        self._llm = await asyncio.to_thread(trt.LLM, **self._llm_kwargs())
        self._stats_task = asyncio.create_task(self._follow_stats())
        max_len = self.config.max_model_len or int(getattr(self._llm.args, "max_seq_len", 0) or 0)
        log.info("trtllm_started", model=self.model, served=self.model_name, max_len=max_len)
        return EngineInfo(
            model=self.model_name,
            kv_block_size=self.config.block_size,
            kv_blocks_total=0,  # known from the first iteration stats (see stats())
            max_model_len=max_len,
        )

    def _llm_kwargs(self) -> dict[str, Any]:
        """`llm_settings` with its dicts made TensorRT-LLM's config objects by TensorRT-LLM's
        own helper, which trtllm-serve applies to --extra_llm_api_options (UNVERIFIED)."""
        settings = llm_settings(self.model, self.config)
        llm_args = importlib.import_module("tensorrt_llm.llmapi.llm_args")
        update = getattr(llm_args, "update_llm_args_with_extra_dict", None)
        if update is None:  # a release without it: LLM(...) validates dicts itself (pydantic)
            return settings
        model = settings.pop("model")
        merged: dict[str, Any] = update({"model": model}, settings)
        return merged

    def _require_llm(self) -> Any:
        if self._llm is None:
            raise NotSupported("the trtllm engine is not started")
        return self._llm

    async def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        llm = self._require_llm()
        req.sampling.validate()
        prompt_len = len(req.prompt_token_ids)
        limit = self.config.max_model_len
        if limit is not None and prompt_len + req.sampling.max_tokens > limit:
            raise PromptTooLong(prompt_len, req.sampling.max_tokens, limit)
        try:
            result = llm.generate_async(
                req.prompt_token_ids,
                sampling_params=self._trt.SamplingParams(**sampling_kwargs(req.sampling)),
                lora_request=self._lora_request(req.lora_name),
                streaming=True,
            )
        except ValueError as e:  # TensorRT-LLM's own argument checks
            raise InvalidRequest(str(e)) from e
        self._running[req.request_id] = result
        done = False
        try:
            async for output in result:
                out = output.outputs[0]
                reason = finish_reason(out.finish_reason, bool(output.finished))
                usage = None
                if reason is not None:
                    done = True
                    cached = int(getattr(output, "cached_tokens", 0) or 0)
                    usage = Usage(prompt_len, len(out.token_ids), cached)
                yield GenerateChunk(list(out.token_ids_diff), out.text_diff, reason, usage)
                if done:
                    return
        finally:
            self._running.pop(req.request_id, None)
            if not done:
                result.abort()

    def _lora_request(self, name: str | None) -> Any:
        if name is None:
            return None
        if name not in self._loras:
            raise UnknownLora(name, list(self._loras))
        return self._loras[name]

    async def abort(self, request_id: str) -> bool:
        result = self._running.get(request_id)
        if result is None:
            return False
        result.abort()
        return True

    async def kv_events(self) -> AsyncIterator[list[KvEvent]]:
        """Events in engine order; each TensorRT-LLM event becomes one batch."""
        llm = self._require_llm()
        converter = KvEventConverter(self.config.block_size, self._lora_ids.get)
        while not self._closed.is_set():
            try:
                async for event in llm.get_kv_cache_events_async(timeout=0.5):
                    try:
                        batch = converter.convert(event)
                    except (KeyError, ValueError) as e:
                        log.error("trtllm_kv_event_unreadable", error=str(e), kv_event=str(event))
                        continue
                    if batch:
                        yield batch
            except (IndexError, asyncio.QueueEmpty):  # nothing queued (as trtllm-serve treats it)
                pass
            await asyncio.sleep(0.01)

    async def _follow_stats(self) -> None:
        while not self._closed.is_set():
            try:
                async for stat in self._llm.get_stats_async(timeout=self.config.stats_timeout_s):
                    load = load_from_iteration_stats(stat)
                    if load is not None:
                        self._load = load
            except (IndexError, asyncio.QueueEmpty):
                pass
            except Exception as e:  # noqa: BLE001  (stats are best effort; keep serving)
                log.warning("trtllm_stats_failed", error=str(e))
                await asyncio.sleep(self.config.stats_timeout_s)
            await asyncio.sleep(0.1)

    def stats(self) -> EngineStats:
        """Running requests we know of; queue and KV numbers from the latest iteration stats
        (TensorRT-LLM reports those only when iteration stats are on, e.g. the PyTorch
        backend's enable_iter_perf_stats=True in extra_llm_kwargs)."""
        return EngineStats(
            num_running=max(len(self._running) - self._load.num_waiting, 0),
            num_waiting=self._load.num_waiting,
            kv_blocks_active=self._load.kv_blocks_active,
            kv_blocks_total=self._load.kv_blocks_total,
        )

    def loras(self) -> list[str]:
        return sorted(self._loras)

    async def load_lora(self, name: str, path: str) -> None:
        """Register an adapter; TensorRT-LLM loads it into its LoRA cache on first use."""
        if self.config.max_loras <= 0:
            raise NotSupported("LoRA is off for this trtllm engine (start it with max_loras > 0)")
        if name in self._loras:
            return
        executor = importlib.import_module("tensorrt_llm.executor")
        lora_id = max(self._lora_ids, default=0) + 1
        self._loras[name] = executor.LoRARequest(name, lora_id, path)  # checks the path exists
        self._lora_ids[lora_id] = name

    async def unload_lora(self, name: str) -> None:
        """Forget an adapter; TensorRT-LLM evicts it from its cache when it needs the room."""
        request = self._loras.pop(name, None)
        if request is None:
            raise UnknownLora(name, list(self._loras))
        self._lora_ids.pop(request.lora_int_id, None)

    async def predict(self, payload: Any) -> AsyncGenerator[Any, None]:
        raise NotSupported("the trtllm engine serves Generate, not Predict")
        yield  # pragma: no cover  (makes this an async generator)

    async def shutdown(self) -> None:
        self._closed.set()
        if self._stats_task is not None:
            self._stats_task.cancel()
        if self._llm is not None:
            await asyncio.to_thread(self._llm.shutdown)
