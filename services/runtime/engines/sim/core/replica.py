"""`SimReplicaCore`: one simulated vLLM replica as a discrete-event state machine (pure, no I/O).

Virtual time only: the caller passes `now` (float seconds) in and gets step durations out;
nothing here sleeps, reads a clock or draws from the world's randomness (jitter uses a
`Random(config.seed)` of its own). A benchmark can drive dozens of cores in one
process; the asyncio adapter (engine.py) drives one in real or scaled time.

Driving a core in virtual time:

    core = SimReplicaCore(SimConfig(num_blocks=2048, seed=1))
    core.add_request("r1", prompt_token_ids, max_tokens=128, lora_name=None, now=0.0)
    t = 0.0
    while core.has_work:
        result = core.step(t)        # schedules one step at t
        t = result.end               # its tokens, finishes and KV events happen at t + duration
        ...                          # add requests that arrived before t, then step again

A request added while a step runs (its `now` before that step's end) joins at the next step,
as in a real engine. For a fleet, keep one clock per core and advance each core until the
next arrival is due before routing it (see tests/runtime/test_sim_core.py, `Run`).

Speed (CPython 3.11, one core of a shared 2-core machine): ~3-4 us per step plus ~1.2-1.5 us
per generated token; 32 replicas at 2 req/s each (1000-token prompts, 200 output tokens) run
one simulated minute in ~3.3 s (~85k steps/s, ~235k tokens/s), i.e. an hour in ~3-4 minutes;
busier replicas cost in proportion to the tokens they generate.

Public API:
    SimReplicaCore(config)
        .add_request(req_id, prompt_token_ids, max_tokens, lora_name=None, now=0.0,
                     stop_token_ids=()) -> None          raises InvalidRequest / PromptTooLong
        .abort(req_id, now=None) -> FinishedRequest | None
        .step(now) -> StepResult      one engine step starting at `now` (not before the last end)
        .has_work -> bool             requests waiting or running
        .stats() -> CoreStats
        .kv_state() -> list[BlockStored]   every cached block, parents first
        .reset_prefix_cache() -> bool      AllBlocksCleared goes out with the next events
        .drain_events() -> list[KvEvent]   events recorded outside step() (reset)
    validate_request(config, prompt_token_ids, max_tokens)   the checks add_request makes
    StepResult(start, duration, tokens, finished, preempted, kv_events, ...) / .end
    FinishedRequest(req_id, finish_reason, prompt_tokens, completion_tokens, num_cached_tokens,
                    arrival_time, first_token_time, finish_time, num_preemptions)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from random import Random

from basalt.ids import RequestId
from basalt.kvevents import BlockStored, KvEvent
from services.runtime.core.engine import FinishReason
from services.runtime.core.errors import InvalidRequest, PromptTooLong
from services.runtime.engines.sim.core.block_pool import BlockPool
from services.runtime.engines.sim.core.config import SimConfig
from services.runtime.engines.sim.core.errors import DuplicateRequest, TokenOutOfVocab
from services.runtime.engines.sim.core.scheduler import Scheduler
from services.runtime.engines.sim.core.sequence import Sequence, request_token_seed
from services.runtime.engines.sim.core.timing import jittered, step_duration

_EPS = 1e-9


@dataclass(slots=True, frozen=True)
class FinishedRequest:
    """A request that left the replica, with what a client and a benchmark want to know."""

    req_id: RequestId
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    num_cached_tokens: int  # prefix-cache hit at first admission (0 if never admitted)
    arrival_time: float
    first_token_time: float | None
    finish_time: float
    num_preemptions: int


@dataclass(slots=True)
class StepResult:
    """One step: it runs from `start` for `duration`; its outcome is visible at `end`."""

    start: float
    duration: float
    tokens: dict[RequestId, int]  # the one token each request produced this step
    finished: list[FinishedRequest]
    preempted: list[RequestId]
    kv_events: list[KvEvent]
    num_scheduled: int
    num_prefill_tokens: int
    num_decode_seqs: int

    @property
    def end(self) -> float:
        return self.start + self.duration


@dataclass(slots=True, frozen=True)
class CoreStats:
    num_running: int
    num_waiting: int
    kv_blocks_active: int
    kv_blocks_total: int
    kv_blocks_cached: int
    kv_blocks_cached_free: int
    num_preemptions: int
    num_steps: int


def validate_request(config: SimConfig, prompt_token_ids: list[int], max_tokens: int) -> None:
    """Raise InvalidRequest (or PromptTooLong, TokenOutOfVocab) for input a replica refuses."""
    if not prompt_token_ids:
        raise InvalidRequest("prompt is empty: at least one token id is needed")
    if max_tokens < 1:
        raise InvalidRequest(f"max_tokens must be at least 1, got {max_tokens}")
    if len(prompt_token_ids) + max_tokens > config.max_model_len:
        raise PromptTooLong(len(prompt_token_ids), max_tokens, config.max_model_len)
    lo, hi = min(prompt_token_ids), max(prompt_token_ids)
    if lo < 0 or hi >= config.vocab_size:
        bad = lo if lo < 0 else hi
        raise TokenOutOfVocab(bad, prompt_token_ids.index(bad), config.vocab_size)


class SimReplicaCore:
    """Block pool + scheduler + timing model of one simulated replica."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config
        self.pool = BlockPool(
            config.num_blocks,
            config.block_size,
            hash_function=config.hash_function,
            hash_seed=config.hash_seed,
            record_events=config.kv_events,
        )
        self.scheduler = Scheduler(
            self.pool,
            max_num_seqs=config.max_num_seqs,
            max_num_batched_tokens=config.max_num_batched_tokens,
            max_model_len=config.max_model_len,
            token_lo=config.min_output_token_id,
            token_span=config.vocab_size - config.min_output_token_id,
        )
        self._rng = Random(config.seed)
        self._busy_until = float("-inf")
        self._num_steps = 0

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def add_request(
        self,
        req_id: str,
        prompt_token_ids: list[int],
        max_tokens: int,
        lora_name: str | None = None,
        now: float = 0.0,
        stop_token_ids: Iterable[int] = (),
    ) -> None:
        """Queue a request that arrived at `now`; it is scheduled by the next step."""
        validate_request(self.config, prompt_token_ids, max_tokens)
        rid = RequestId(req_id)
        if rid in self.scheduler.requests:
            raise DuplicateRequest(req_id)
        seq = Sequence(
            req_id=rid,
            token_ids=list(prompt_token_ids),
            num_prompt_tokens=len(prompt_token_ids),
            max_tokens=max_tokens,
            lora_name=lora_name or None,
            stop_token_ids=frozenset(stop_token_ids),
            arrival_time=now,
            token_seed=request_token_seed(self.config.seed, prompt_token_ids),
        )
        self.scheduler.add(seq)

    def abort(self, req_id: str, now: float | None = None) -> FinishedRequest | None:
        """Drop a request and free its blocks; None when it is not waiting or running."""
        seq = self.scheduler.abort(RequestId(req_id))
        if seq is None:
            return None
        return _finished(seq, self._busy_until if now is None else now)

    def step(self, now: float) -> StepResult:
        """Run one engine step starting at `now`. With no work it is empty and takes 0 s."""
        if now < self._busy_until - _EPS:
            raise ValueError(
                f"step at {now} starts before the previous step ends ({self._busy_until})"
            )
        batch = self.scheduler.schedule()
        duration = jittered(
            step_duration(self.config.profile, batch.load),
            self.config.profile.jitter_sigma,
            self._rng,
        )
        end = now + duration
        tokens, done = self.scheduler.complete(batch, end)
        self._busy_until = end
        if batch.seqs:
            self._num_steps += 1
        return StepResult(
            start=now,
            duration=duration,
            tokens=tokens,
            finished=[_finished(s, end) for s in done],
            preempted=[s.req_id for s in batch.preempted],
            kv_events=self.pool.drain_events(),
            num_scheduled=len(batch.seqs),
            num_prefill_tokens=batch.load.prefill_tokens,
            num_decode_seqs=batch.load.decode_seqs,
        )

    def stats(self) -> CoreStats:
        pool = self.pool
        return CoreStats(
            num_running=len(self.scheduler.running),
            num_waiting=len(self.scheduler.waiting),
            kv_blocks_active=pool.num_active_blocks,
            kv_blocks_total=pool.num_blocks,
            kv_blocks_cached=pool.num_cached_blocks,
            kv_blocks_cached_free=pool.num_cached_free_blocks,
            num_preemptions=self.scheduler.num_preemptions,
            num_steps=self._num_steps,
        )

    def kv_state(self) -> list[BlockStored]:
        return self.pool.cached_blocks()

    def reset_prefix_cache(self) -> bool:
        return self.pool.reset()

    def drain_events(self) -> list[KvEvent]:
        return self.pool.drain_events()


def _finished(seq: Sequence, when: float) -> FinishedRequest:
    assert seq.finish_reason is not None
    return FinishedRequest(
        req_id=seq.req_id,
        finish_reason=seq.finish_reason,
        prompt_tokens=seq.num_prompt_tokens,
        completion_tokens=seq.num_output_tokens,
        num_cached_tokens=max(seq.num_cached_tokens, 0),
        arrival_time=seq.arrival_time,
        first_token_time=seq.first_token_time,
        finish_time=when,
        num_preemptions=seq.num_preemptions,
    )
