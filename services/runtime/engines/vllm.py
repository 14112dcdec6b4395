"""The vLLM engine: AsyncLLM in-process, its KV events over zmq, LoRA at run time (does I/O).

vLLM runs its EngineCore in child processes; this adapter owns them and a zmq SUB socket on
which vLLM's own KV-event publisher (prefix caching on) connects. The conversions from
vLLM's types to ours are plain functions in `vllm_convert`; the adapter class is here.
vLLM is imported lazily, so importing this module costs nothing until `start()`.

vLLM is started with `vllm_settings`: basalt's defaults (LoRA on, two adapters at once),
under the deployment's own vLLM settings (`VllmConfig.engine_settings`: any vLLM engine
argument, e.g. max_lora_rank, enforce_eager, tensor_parallel_size, quantization,
speculative_config, kv_transfer_config), under what basalt owns (the model and its served
name, the runtime's sizes, prefix caching and KV events on, log stats off). They become
`vllm serve` flags parsed by vLLM's own parser (`basalt.vllm_args`), so a setting means
here exactly what it means to `vllm serve`. basalt sets no CPU-friendly defaults of its own
(enforce_eager, a small max_lora_rank): deploy/local/tiny.yaml and the tests do.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from basalt.kvevents import KvEvent
from basalt.log import get_logger
from services.runtime.core.engine import (
    EngineInfo,
    EngineStats,
    GenerateChunk,
    GenerateInput,
    Usage,
)
from services.runtime.core.errors import InvalidRequest, NotSupported, UnknownLora
from services.runtime.core.request_phases import mark_engine_accepted

from .vllm_convert import (
    check_input,
    convert_batch,
    finish_reason,
    missing_batches,
    vllm_sampling_kwargs,
)

__all__ = ["BASALT_DEFAULTS", "VllmConfig", "VllmEngine", "vllm_flags", "vllm_settings"]

log = get_logger(__name__)


@dataclass(slots=True)
class VllmConfig:
    """What basalt's runtime gives vLLM: the settings it owns, and the deployment's own."""

    model: str  # a local model folder (nothing is downloaded)
    served_model_name: str | None = None  # default: the folder's name
    # vLLM's CPU attention needs a multiple of 32; GPUs take 16 or 32 as well.
    block_size: int = 32
    max_model_len: int = 1024
    # Share of device memory for weights + KV cache. On the CPU build: of the NUMA node's RAM
    # (0.2 gives the tiny model ~1.1 GiB of KV cache here). Ignored when kv_cache_bytes is set;
    # VLLM_CPU_KVCACHE_SPACE (GiB), if set, overrides both on CPU.
    gpu_memory_utilization: float = 0.2
    kv_cache_bytes: int | None = None
    max_num_seqs: int = 16
    kv_events_topic: str = "kv"
    # Any other vLLM engine argument, vLLM's name -> value (e.g. {"enforce_eager": True}).
    engine_settings: dict[str, Any] = field(default_factory=dict)


# basalt's defaults, which a deployment's settings override: LoRA adapters load at run time
# (the router places them on replicas), two at once.
BASALT_DEFAULTS: dict[str, Any] = {"enable_lora": True, "max_loras": 2}


def vllm_settings(c: VllmConfig, kv_endpoint: str) -> dict[str, Any]:
    """Every vLLM engine argument the engine starts with, by vLLM's names (pure)."""
    owned: dict[str, Any] = {
        "model": c.model,
        "served_model_name": c.served_model_name or Path(c.model).name,
        "block_size": c.block_size,
        "max_model_len": c.max_model_len,
        "gpu_memory_utilization": c.gpu_memory_utilization,
        "kv_cache_memory_bytes": c.kv_cache_bytes,
        "max_num_seqs": c.max_num_seqs,
        "enable_prefix_caching": True,
        "disable_log_stats": True,  # only our stat logger (no Prometheus globals, no log spam)
        "kv_events_config": {
            "enable_kv_cache_events": True,
            "publisher": "zmq",
            "endpoint": kv_endpoint,  # a tcp://host:port endpoint: vLLM connects to our SUB
            "topic": c.kv_events_topic,
        },
    }
    return {**BASALT_DEFAULTS, **c.engine_settings, **owned}


def vllm_flags(c: VllmConfig, kv_endpoint: str) -> list[str]:
    """The `vllm serve` flags for the same engine (all but the model, which `vllm serve`
    takes first): what `basalt bench serve` starts its peer with (imports vLLM)."""
    from basalt.vllm_args import flag_words

    settings = vllm_settings(c, kv_endpoint)
    del settings["model"]
    return [w for key, value in settings.items() for w in flag_words(key, value)]


def effective_settings(vllm_config: Any, keys: list[str]) -> dict[str, Any]:
    """What vLLM made of each setting given: the field of that name in its resolved
    VllmConfig's parts (model_config, cache_config, lora_config, ...), "?" where none has it.
    For the start-up log only: it never fails."""
    parts: list[Any] = []
    for name in dir(vllm_config):
        if name.endswith("_config") and not name.startswith("_"):
            try:
                parts.append(getattr(vllm_config, name))
            except Exception:  # noqa: BLE001, S112 - a computed part: leave it out
                continue
    out: dict[str, Any] = {}
    for key in keys:
        try:
            found = [getattr(part, key) for part in parts
                     if part is not None and hasattr(part, key)]
        except Exception:  # noqa: BLE001 - a computed field: say so, do not fail the start
            found = []
        value = found[0] if found else "?"
        out[key] = value if isinstance(value, (bool, int, float, str, type(None))) else str(value)
    return out


def check_block_size(block_size: int) -> None:
    """Fail with the setting's name where vLLM would fail deep in its worker process."""
    from vllm.platforms import current_platform

    if current_platform.is_cpu() and block_size % 32:
        raise ValueError(
            f"block_size must be a multiple of 32 on vLLM's CPU build, got {block_size}"
        )



@dataclass(slots=True)
class _SchedulerView:
    """The latest SchedulerStats vLLM reported (written by the stat logger)."""

    num_running: int = 0
    num_waiting: int = 0
    kv_usage: float = 0.0


def _stat_logger_class(view: _SchedulerView) -> type:
    """A vLLM StatLoggerBase that copies each SchedulerStats into `view`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class SchedulerStatsSink(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            pass

        def record(self, scheduler_stats: Any, iteration_stats: Any, *_: Any, **__: Any) -> None:
            if scheduler_stats is None:
                return
            view.num_running = scheduler_stats.num_running_reqs
            view.num_waiting = (
                scheduler_stats.num_waiting_reqs + scheduler_stats.num_skipped_waiting_reqs
            )
            view.kv_usage = scheduler_stats.kv_cache_usage

        def log_engine_initialized(self) -> None:
            pass

    return SchedulerStatsSink


def _chunk(out: Any, prompt_len: int, completion: int) -> GenerateChunk | None:
    """Our chunk from one DELTA RequestOutput (`completion`: tokens so far, these included);
    None for an empty non-final one."""
    o = out.outputs[0]
    if out.finished:
        usage = Usage(prompt_len, completion, out.num_cached_tokens or 0)
        return GenerateChunk(list(o.token_ids), o.text, finish_reason(o.finish_reason), usage)
    if o.token_ids or o.text:
        return GenerateChunk(list(o.token_ids), o.text)
    return None


async def _abort_quietly(llm: Any, internal_id: str) -> None:
    """Abort one request by vLLM's internal id; an engine already gone has nothing to free."""
    try:
        await asyncio.shield(llm.abort(internal_id, internal=True))
    except Exception as e:  # noqa: BLE001 - e.g. EngineDeadError at shutdown
        log.debug("vllm abort failed", error=str(e) or type(e).__name__)


class VllmEngine:
    """One model in vLLM's AsyncLLM. Methods run on the caller's asyncio loop."""

    kind = "vllm"
    # generate() hands over all vLLM made since the last read, merged (its per-request
    # collector): the server reads it directly, no pump (services/runtime/pump.py).
    merges_outputs = True

    def __init__(self, config: VllmConfig) -> None:
        self.config = config
        self._llm: Any = None
        self._info: EngineInfo | None = None
        self._vocab_size = 0
        self._view = _SchedulerView()
        self._running: set[str] = set()
        self._loras: dict[str, str] = {}  # name -> path, loaded now
        self._lora_ids: dict[str, int] = {}  # name -> vLLM int id, stable for the process
        self._next_lora_id = itertools.count(1)
        self._kv_queue: asyncio.Queue[list[KvEvent] | None] = asyncio.Queue()
        self._zmq_ctx: Any = None
        self._sub: Any = None
        self._reader: asyncio.Task[None] | None = None

    # -- lifecycle --

    async def start(self) -> EngineInfo:
        """Start vLLM (tens of seconds on CPU; the loop stays free meanwhile)."""
        if self._llm is not None:
            raise RuntimeError("the vllm engine is already started")
        endpoint = self._open_kv_socket()  # bound first: vLLM's publisher connects to it
        try:
            self._llm = await asyncio.to_thread(self._build_llm, endpoint)
        except BaseException:
            await self._close_kv_socket()
            raise
        self._reader = asyncio.create_task(self._read_kv_events(), name="vllm-kv-events")
        vcfg = self._llm.vllm_config
        self._vocab_size = self._llm.model_config.get_vocab_size()
        self._info = EngineInfo(
            model=self.config.served_model_name or Path(self.config.model).name,
            kv_block_size=vcfg.cache_config.block_size,
            kv_blocks_total=max((vcfg.cache_config.num_gpu_blocks or 1) - 1, 0),  # less null
            max_model_len=self._llm.model_config.max_model_len,
        )
        log.info("vllm engine started", model=self._info.model, blocks=self._info.kv_blocks_total)
        return self._info

    def _build_llm(self, kv_endpoint: str) -> Any:
        from vllm.v1.engine.async_llm import AsyncLLM

        from basalt.vllm_args import engine_args

        c = self.config
        check_block_size(c.block_size)
        args = engine_args(vllm_settings(c, kv_endpoint))  # vLLM's parser: its names, types
        llm = AsyncLLM.from_engine_args(args, stat_loggers=[_stat_logger_class(self._view)])
        given = sorted(c.engine_settings)
        log.info("vllm engine settings", given=c.engine_settings,
                 effective=effective_settings(llm.vllm_config, given))
        return llm

    async def shutdown(self) -> None:
        """Stop vLLM's processes and the KV-event socket; safe to call twice."""
        llm, self._llm = self._llm, None
        if llm is not None:
            if self._running:  # end every open stream with finish_reason ABORT
                await llm.abort(list(self._running))
            handler = getattr(llm, "output_handler", None)
            if handler is not None:  # stop reading outputs before the EngineCore goes away
                handler.cancel()
                await asyncio.gather(handler, return_exceptions=True)
            await asyncio.to_thread(llm.shutdown)
            # AsyncLLM.__del__ calls shutdown() again, perhaps at interpreter exit when
            # vLLM's module globals are gone (a TypeError on stderr): make that a no-op.
            llm.shutdown = lambda *_, **__: None
        await self._close_kv_socket()

    # -- generation --

    async def generate(self, req: GenerateInput) -> AsyncGenerator[GenerateChunk, None]:
        """Stream chunks; InvalidRequest (and subclasses) come before the first chunk."""
        from vllm.exceptions import VLLMClientError
        from vllm.inputs import TokensPrompt
        from vllm.outputs import STREAM_FINISHED
        from vllm.sampling_params import RequestOutputKind
        from vllm.sampling_params import SamplingParams as VllmSamplingParams

        llm, info = self._started()
        check_input(req, self._vocab_size, info.max_model_len)
        lora = self._lora_request(req.lora_name)
        if req.request_id in self._running:
            raise InvalidRequest(f"request id {req.request_id!r} is already running")
        try:
            params = VllmSamplingParams(
                **vllm_sampling_kwargs(req.sampling), output_kind=RequestOutputKind.DELTA
            )
        except (ValueError, VLLMClientError) as e:  # e.g. an empty stop string
            raise InvalidRequest(str(e)) from e
        prompt = TokensPrompt(prompt_token_ids=list(req.prompt_token_ids))
        # AsyncLLM.add_request and its per-request collector, read here directly (what
        # AsyncLLM.generate does, one generator fewer per token): the collector merges
        # outputs while we lag, and add_request returning is "the engine accepted it".
        self._running.add(req.request_id)
        collector = None
        finished = False
        try:
            try:
                collector = await llm.add_request(
                    req.request_id, prompt, params, lora_request=lora)
            except (ValueError, VLLMClientError) as e:
                raise InvalidRequest(str(e)) from e  # vLLM refused the request on admission
            mark_engine_accepted()
            prompt_len, completion = len(req.prompt_token_ids), 0
            while not finished:
                out = collector.get_nowait() or await collector.get()
                if out is STREAM_FINISHED:
                    break
                finished = out.finished
                completion += len(out.outputs[0].token_ids)
                chunk = _chunk(out, prompt_len, completion)
                if chunk is not None:
                    yield chunk
        finally:
            self._running.discard(req.request_id)
            if collector is not None:
                if not finished:  # closed early or cancelled (client gone): free the sequence
                    await _abort_quietly(llm, collector.request_id)
                collector.close()

    async def abort(self, request_id: str) -> bool:
        if self._llm is None or request_id not in self._running:
            return False
        await self._llm.abort(request_id)
        return True

    def predict(self, payload: Any) -> AsyncGenerator[Any, None]:
        raise NotSupported("the vllm engine serves generate(), not predict()")

    # -- state --

    def stats(self) -> EngineStats:
        total = self._info.kv_blocks_total if self._info else 0
        v = self._view
        return EngineStats(v.num_running, v.num_waiting, round(v.kv_usage * total), total)

    async def reset_prefix_cache(self) -> bool:
        """Drop every cached block (AllBlocksCleared follows); False while blocks are in use."""
        llm, _ = self._started()
        return bool(await llm.reset_prefix_cache())

    # -- LoRA --

    def loras(self) -> list[str]:
        return sorted(self._loras)

    async def load_lora(self, name: str, path: str) -> None:
        llm, _ = self._started()
        if llm.vllm_config.lora_config is None:
            raise NotSupported("this engine was started with enable_lora=False")
        if self._loras.get(name) == path:
            return
        if not (Path(path) / "adapter_config.json").is_file():
            raise InvalidRequest(f"no LoRA adapter (adapter_config.json) at {path!r}")
        if name in self._loras:
            await self.unload_lora(name)
        lora_id = self._lora_ids.setdefault(name, next(self._next_lora_id))
        request = self._make_lora_request(name, lora_id, path)
        try:
            ok = await llm.add_lora(request)
        except Exception as e:  # vLLM re-raises the worker's error as-is
            raise InvalidRequest(f"cannot load LoRA {name!r} from {path!r}: {e}") from e
        if not ok:
            raise InvalidRequest(f"vLLM refused LoRA {name!r} from {path!r}")
        self._loras[name] = path
        log.info("lora loaded", lora=name, path=path, lora_id=lora_id)

    async def unload_lora(self, name: str) -> None:
        llm, _ = self._started()
        if name not in self._loras:
            raise UnknownLora(name, self.loras())
        del self._loras[name]
        await llm.remove_lora(self._lora_ids[name])
        log.info("lora unloaded", lora=name)

    def _lora_request(self, name: str | None) -> Any:
        if name is None:
            return None
        if name not in self._loras:
            raise UnknownLora(name, self.loras())
        return self._make_lora_request(name, self._lora_ids[name], self._loras[name])

    @staticmethod
    def _make_lora_request(name: str, lora_id: int, path: str) -> Any:
        from vllm.lora.request import LoRARequest

        return LoRARequest(lora_name=name, lora_int_id=lora_id, lora_path=path)

    def _started(self) -> tuple[Any, EngineInfo]:
        if self._llm is None or self._info is None:
            raise RuntimeError("the vllm engine is not running (call start() first)")
        return self._llm, self._info

    # -- KV events --

    async def kv_events(self) -> AsyncIterator[list[KvEvent]]:
        """Batches in the order vLLM published them; ends at shutdown. One consumer only."""
        while True:
            batch = await self._kv_queue.get()
            if batch is None:
                self._kv_queue.put_nowait(None)  # let a later call end too
                return
            yield batch

    def _open_kv_socket(self) -> str:
        import zmq
        import zmq.asyncio

        self._zmq_ctx = zmq.asyncio.Context()
        self._sub = self._zmq_ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.SUBSCRIBE, self.config.kv_events_topic.encode())
        self._sub.setsockopt(zmq.RCVHWM, 0)  # never drop here; vLLM's HWM guards its side
        port = self._sub.bind_to_random_port("tcp://127.0.0.1")
        return f"tcp://127.0.0.1:{port}"

    async def _read_kv_events(self) -> None:
        import msgspec
        from vllm.distributed.kv_events import KVEventBatch

        decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
        last_seq: int | None = None
        while True:
            frames = await self._sub.recv_multipart()
            if len(frames) != 3:  # (topic, seq, payload) is vLLM's wire format
                log.warning("malformed vllm kv event message", frames=len(frames))
                continue
            seq = int.from_bytes(frames[1], "big", signed=True)
            payload = frames[2]
            if lost := missing_batches(last_seq, seq):
                log.warning("vllm kv events lost", missing_batches=lost, last=last_seq, seq=seq)
            last_seq = seq
            try:
                batch = decoder.decode(payload)
            except msgspec.DecodeError as e:
                log.warning("undecodable vllm kv event batch", seq=seq, error=str(e))
                continue
            if events := convert_batch(batch.events):
                self._kv_queue.put_nowait(events)

    async def _close_kv_socket(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)
            self._reader = None
        if self._sub is not None:
            self._sub.close(linger=0)
            self._sub = None
        if self._zmq_ctx is not None:
            self._zmq_ctx.term()
            self._zmq_ctx = None
        self._kv_queue.put_nowait(None)
