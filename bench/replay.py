"""Discrete-event replay of a trace through the router's real prefix index, fleet view and
policies over simulated vLLM replicas, in virtual time (pure, no I/O).

One event queue (heapq, ties broken by insertion order, so a run is a pure function of trace,
config and seed) carries:
  arrival        the router hashes the prompt, matches it in `PrefixIndex`, builds views with
                 `Fleet.views`, calls `policy.choose`; the request goes to that replica's
                 `SimReplicaCore`, or waits in the router's bounded FIFO queue
  step end       a replica's step is over: its tokens (TTFT, ITL), finished requests, and KV
                 events, numbered per replica (seq 1, 2, ...) into a `KvEventBatchData`
  kv delivery    the batch reaches the index `event_delay_s` later (NATS latency)
  load report    every `load_report_s` (phase-shifted per replica) the replica's stats become a
                 `LoadReport`, which reaches the fleet `event_delay_s` later
  queue timeout  a request still in the router queue after `queue_timeout_s` is rejected
Between reports the fleet counts the router's own in-flight requests, exactly as the live
router does (`services/router/fleet.py` is used as is). Each replica steps back to back while
it has work. The request reaches the replica when it is routed (no gRPC delay is modelled).

Prompts longer than the replicas accept (prompt + output > max_model_len) are counted as
`too_long` and never routed. The router queue retries its head whenever a request finishes or
a load report arrives; whether any replica is eligible does not depend on the request, so the
queue is strictly first come, first served.

The oracle hit ratio is the bound no policy can beat: one replica with unlimited KV cache that
holds every block (prompt and completion) of every earlier request (`trace_bounds`).
"""

from __future__ import annotations

import heapq
import math
import random
import time
from array import array
from collections import deque
from dataclasses import dataclass, field, replace

from basalt.ids import ReplicaId
from basalt.kvevents import KvEventBatchData
from basalt.pb import events_pb2
from services.router.core.fleet import Fleet
from services.router.core.index import PrefixIndex
from services.router.core.policy import RoundRobinState, choose
from services.router.core.types import PolicyConfig, PolicyKind, RouteRequest
from services.runtime.core.errors import PromptTooLong
from services.runtime.engines.sim.core.config import SimConfig
from services.runtime.engines.sim.core.replica import SimReplicaCore, StepResult, validate_request

from .traces import Trace, TraceBounds, bounds

DEPLOYMENT = "bench"
EPOCH = "epoch-0"
# Llama-3.1-8B (bf16) on one H100 80GB at vLLM's gpu_memory_utilization 0.9:
# 72 GiB - 15 GiB of weights - ~5 GiB activations/graphs = ~52 GiB of KV at 128 KiB per token.
H100_LLAMA_8B_BLOCKS = 26_000

_ARRIVE, _STEP_END, _KV, _TICK, _LOAD, _TIMEOUT = range(6)


@dataclass(slots=True, frozen=True)
class ReplayConfig:
    """The fleet, the router's delays and limits, and the policy weights."""

    replicas: int = 8
    num_blocks: int = H100_LLAMA_8B_BLOCKS
    block_size: int = 16
    max_model_len: int = 131_072  # Llama-3.1's context
    max_num_seqs: int = 256
    max_num_batched_tokens: int = 8192
    event_delay_s: float = 0.005  # KV events and load reports: replica -> router over NATS
    load_report_s: float = 1.0  # the runtime's default load_report_interval
    queue_limit: int = 64  # the deployment file's defaults
    queue_timeout_s: float = 30.0
    seed: int = 0  # the `random` policy's rng
    sim_seed: int = 0  # every replica's: the same prompt gets the same completion anywhere
    vocab_size: int = 32_000  # the replicas' (the trace's token ids must be below it)
    policy: PolicyConfig = field(default_factory=PolicyConfig)

    def __post_init__(self) -> None:
        if self.replicas < 1:
            raise ValueError(f"replicas must be >= 1, got {self.replicas}")
        for name in ("event_delay_s", "queue_timeout_s"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"{name} must be a finite number >= 0")
        if not (self.load_report_s > 0 and math.isfinite(self.load_report_s)):
            raise ValueError("load_report_s must be a positive number")
        if self.queue_limit < 0:
            raise ValueError("queue_limit must be >= 0")

    def sim_config(self) -> SimConfig:
        """One replica's simulator settings (raises SimConfigError for a bad value)."""
        return SimConfig(
            block_size=self.block_size,
            num_blocks=self.num_blocks,
            max_model_len=self.max_model_len,
            max_num_seqs=self.max_num_seqs,
            max_num_batched_tokens=self.max_num_batched_tokens,
            seed=self.sim_seed,
            vocab_size=self.vocab_size,
        )


@dataclass(slots=True, frozen=True)
class PreparedTrace:
    """What every policy's run shares: own block hashes per request, and which are too long."""

    trace: Trace
    block_size: int
    hashes: list[array]  # array('Q') of the router's own hashes of each prompt's full blocks
    too_long: list[bool]


def prepare(trace: Trace, config: ReplayConfig) -> PreparedTrace:
    """Hash every prompt once (the router's hash) and check it against the replicas' limits."""
    sim = config.sim_config()
    hasher = PrefixIndex().hasher
    hashes, too_long = [], []
    for r in trace.requests:
        hashes.append(array("Q", hasher(r.prompt, config.block_size)))
        try:
            validate_request(sim, r.prompt, r.output_tokens)  # type: ignore[arg-type]
            too_long.append(False)
        except PromptTooLong:
            too_long.append(True)
    return PreparedTrace(trace, config.block_size, hashes, too_long)


@dataclass(slots=True)
class PolicyResult:
    """What one policy did with the trace."""

    policy: str
    requests: int
    finished: int
    rejected: int  # router queue full or timed out
    too_long: int
    queued: int  # waited in the router queue before being routed
    prompt_tokens: int
    cached_tokens: int
    predicted_tokens: int  # the index's overlap on the chosen replica, in tokens
    ttft_ms: dict[str, float]
    itl_ms: dict[str, float]
    output_tokens: int
    makespan_s: float
    busy_s: list[float]
    assigned: dict[str, int]  # requests routed to each replica
    routes: list[int]  # per trace request, the replica index it went to (-1: not routed)
    preemptions: int
    index_skipped_blocks: int
    wall_s: float = 0.0

    @property
    def hit_ratio(self) -> float:
        return self.cached_tokens / self.prompt_tokens if self.prompt_tokens else 0.0

    @property
    def output_tok_s(self) -> float:
        return self.output_tokens / self.makespan_s if self.makespan_s > 0 else 0.0

    @property
    def imbalance(self) -> float:
        mean = sum(self.busy_s) / len(self.busy_s) if self.busy_s else 0.0
        return max(self.busy_s) / mean if mean > 0 else 1.0


@dataclass(slots=True)
class _Req:
    index: int
    arrival: float
    first: float = -1.0
    last: float = -1.0


@dataclass(slots=True)
class _Tally:
    finished: int = 0
    rejected: int = 0
    too_long: int = 0
    queued: int = 0
    prompt: int = 0
    cached: int = 0
    predicted: int = 0
    output: int = 0
    last_finish: float = 0.0


def percentiles(values: list[float], qs: tuple[float, ...] = (0.5, 0.9, 0.99)) -> dict[str, float]:
    """Nearest-rank percentiles as {"p50": ...}; zeros for no values."""
    xs = sorted(values)
    return {f"p{q * 100:g}": xs[max(0, math.ceil(q * len(xs)) - 1)] if xs else 0.0 for q in qs}


class _Replay:
    """One policy's run over a prepared trace; `run()` returns its `PolicyResult`."""

    def __init__(self, prepared: PreparedTrace, config: ReplayConfig, kind: PolicyKind) -> None:
        self.p, self.cfg = prepared, config
        self.policy = replace(config.policy, kind=kind)
        n = config.replicas
        self.ids = [ReplicaId(f"replica-{i}") for i in range(n)]
        self.slot = {rid: i for i, rid in enumerate(self.ids)}
        self.cores = [SimReplicaCore(config.sim_config()) for _ in self.ids]
        self.stepping, self.busy, self.kv_seq = [False] * n, [0.0] * n, [0] * n
        self.fleet = Fleet(ttl_s=math.inf)
        self.index = PrefixIndex()
        for rid in self.ids:
            self.fleet.upsert(_record(rid, config), 0.0)
            self.index.apply_dump(rid, EPOCH, 0, [])  # the router's dump of a new replica
        self.rng = random.Random(config.seed)
        self.rr = RoundRobinState()
        self.heap: list[tuple] = []
        self.order = 0
        self.reqs: dict[str, _Req] = {}  # routed, not finished
        self.queue: deque[_Req] = deque()
        self.pending_arrivals = len(prepared.trace.requests)
        self.routes = [-1] * len(prepared.trace.requests)
        self.ttft: list[float] = []
        self.gaps = array("d")
        self.n = _Tally()

    def push(self, t: float, kind: int, a: object = None) -> None:
        self.order += 1
        heapq.heappush(self.heap, (t, self.order, kind, a))

    @property
    def live(self) -> bool:
        return bool(self.pending_arrivals or self.reqs or self.queue)

    def run(self) -> PolicyResult:
        started = time.perf_counter()
        requests = self.p.trace.requests
        for i, req in enumerate(requests):
            self.push(req.arrival_s, _ARRIVE, i)
        t0 = self.n.last_finish = requests[0].arrival_s if requests else 0.0
        for r in range(self.cfg.replicas):
            self.push(t0 + self.cfg.load_report_s * r / self.cfg.replicas, _TICK, r)
        handlers = (self.on_arrive, self.on_step_end, self.on_kv, self.on_tick, self.on_load,
                    self.on_timeout)
        heap, pop = self.heap, heapq.heappop
        while heap:
            t, _, kind, a = pop(heap)
            handlers[kind](t, a)
        return self.result(t0, time.perf_counter() - started)

    # -- router side -----------------------------------------------------------------------

    def on_arrive(self, t: float, i: int) -> None:
        self.pending_arrivals -= 1
        if self.p.too_long[i]:
            self.n.too_long += 1
            return
        req = _Req(i, t)
        if self.queue or not self.route(req, t):
            self.enqueue(req, t)
            self.drain_queue(t)

    def enqueue(self, req: _Req, t: float) -> None:
        if len(self.queue) >= self.cfg.queue_limit:
            self.n.rejected += 1
            return
        self.n.queued += 1
        self.queue.append(req)
        self.push(t + self.cfg.queue_timeout_s, _TIMEOUT, req)

    def drain_queue(self, t: float) -> None:
        queue = self.queue
        while queue and self.route(queue[0], t):
            queue.popleft()

    def on_timeout(self, t: float, req: _Req) -> None:
        # Timeouts come in queue order, so a request still waiting is at the head.
        if self.queue and self.queue[0] is req:
            self.queue.popleft()
            self.n.rejected += 1

    def route(self, req: _Req, t: float) -> bool:
        """Pick a replica and hand the request to it; False when none is eligible."""
        tr = self.p.trace.requests[req.index]
        hashes = self.p.hashes[req.index]
        bs = self.p.block_size
        request = RouteRequest(len(tr.prompt), len(hashes), session_key=tr.session_id)
        decision = choose(
            request, self.fleet.candidates(DEPLOYMENT, t), self.index.match(hashes), self.policy,
            now=t, rng=self.rng, rr_state=self.rr,
        )
        if decision is None:
            return False
        r = self.routes[req.index] = self.slot[decision.replica_id]
        rid = str(req.index)
        self.reqs[rid] = req
        self.n.predicted += decision.overlap_blocks * bs
        self.fleet.routed(decision.replica_id, rid, max(len(hashes), -(-len(tr.prompt) // bs)), t)
        self.cores[r].add_request(rid, tr.prompt, tr.output_tokens, now=t)  # type: ignore[arg-type]
        if not self.stepping[r]:
            self.start_step(r, t)
        return True

    def on_kv(self, t: float, batch: KvEventBatchData) -> None:
        self.index.apply(batch)

    def on_tick(self, t: float, r: int) -> None:
        s = self.cores[r].stats()
        report = events_pb2.LoadReport(
            replica_id=self.ids[r], deployment=DEPLOYMENT, ts=t, num_running=s.num_running,
            num_waiting=s.num_waiting, kv_usage=s.kv_blocks_active / s.kv_blocks_total,
            kv_blocks_total=s.kv_blocks_total, kv_blocks_active=s.kv_blocks_active,
        )
        self.push(t + self.cfg.event_delay_s, _LOAD, report)
        if self.live:
            self.push(t + self.cfg.load_report_s, _TICK, r)

    def on_load(self, t: float, report: events_pb2.LoadReport) -> None:
        self.fleet.update_load(report, t)
        self.drain_queue(t)

    # -- replica side ----------------------------------------------------------------------

    def start_step(self, r: int, t: float) -> None:
        result = self.cores[r].step(t)
        if result.duration <= 0:
            raise AssertionError(f"replica {r} has work but its step at {t} is empty")
        self.busy[r] += result.duration
        self.stepping[r] = True
        self.push(result.end, _STEP_END, (r, result))

    def on_step_end(self, t: float, item: tuple[int, StepResult]) -> None:
        r, result = item
        rid_r, reqs, gaps, n = self.ids[r], self.reqs, self.gaps, self.n
        for rid in result.tokens:
            req = reqs[rid]
            if req.first < 0:
                req.first = t
                self.ttft.append(t - req.arrival)
                self.fleet.started(rid_r, rid)
            else:
                gaps.append(t - req.last)
            req.last = t
        for done in result.finished:
            del reqs[done.req_id]
            n.finished += 1
            n.prompt += done.prompt_tokens
            n.cached += done.num_cached_tokens
            n.output += done.completion_tokens
            n.last_finish = max(n.last_finish, done.finish_time)
            self.fleet.finished(rid_r, done.req_id, True, t)
        if result.kv_events:
            self.kv_seq[r] += 1
            batch = KvEventBatchData(rid_r, self.kv_seq[r], t, EPOCH, result.kv_events)
            self.push(t + self.cfg.event_delay_s, _KV, batch)
        self.stepping[r] = False
        if self.cores[r].has_work:
            self.start_step(r, t)
        if result.finished:
            self.drain_queue(t)

    def result(self, t0: float, wall_s: float) -> PolicyResult:
        n, total = self.n, len(self.p.trace.requests)
        assert n.finished + n.rejected + n.too_long == total, (n, total)
        gaps = list(self.gaps)
        itl = {"mean": sum(gaps) / len(gaps) if gaps else 0.0, **percentiles(gaps, (0.5, 0.99))}
        return PolicyResult(
            policy=self.policy.kind.value, requests=total, finished=n.finished,
            rejected=n.rejected, too_long=n.too_long, queued=n.queued, prompt_tokens=n.prompt,
            cached_tokens=n.cached, predicted_tokens=n.predicted,
            ttft_ms={k: v * 1000 for k, v in percentiles(self.ttft).items()},
            itl_ms={k: v * 1000 for k, v in itl.items()},
            output_tokens=n.output, makespan_s=n.last_finish - t0, busy_s=list(self.busy),
            assigned={rid: self.routes.count(i) for i, rid in enumerate(self.ids)},
            routes=self.routes,
            preemptions=sum(c.stats().num_preemptions for c in self.cores),
            index_skipped_blocks=self.index.stats().skipped_blocks, wall_s=wall_s,
        )


def _record(rid: ReplicaId, config: ReplayConfig) -> events_pb2.ReplicaRecord:
    return events_pb2.ReplicaRecord(
        replica_id=rid, deployment=DEPLOYMENT, model="sim", engine="sim",
        kv_block_size=config.block_size, kv_blocks_total=config.num_blocks,
        state=events_pb2.REPLICA_STATE_READY, max_model_len=config.max_model_len, epoch=EPOCH,
    )


def replay(prepared: PreparedTrace, config: ReplayConfig, kind: PolicyKind) -> PolicyResult:
    """Run the trace through the fleet with one policy (deterministic for a given config)."""
    if prepared.block_size != config.block_size:
        raise ValueError("the trace was prepared for another block size")
    return _Replay(prepared, config, kind).run()


def trace_bounds(prepared: PreparedTrace, config: ReplayConfig) -> TraceBounds:
    """The oracle and pooled-LRU hit ratios of the trace for this fleet (see TraceBounds)."""
    sim = config.sim_config()
    return bounds(
        prepared.trace, prepared.hashes, prepared.too_long, prepared.block_size,
        config.replicas * config.num_blocks, sim.seed, sim.min_output_token_id, sim.vocab_size,
    )
