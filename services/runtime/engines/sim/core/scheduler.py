"""Continuous batching for the simulator, after vLLM v1's scheduler (pure, no I/O).

`schedule()` picks one step's work; `complete(batch, end_time)` applies its outcome.

1. Running sequences, oldest first, get their next tokens within the step's token budget
   (`max_num_batched_tokens`): one for a decoding sequence; for one still in prefill, the rest
   of its prompt, cut to the budget left (chunked prefill: long prompts span several steps and
   share steps with decodes). When a sequence needs a block and none is free, the newest
   running sequence is preempted (recompute: blocks freed, progress dropped, back to the head
   of the waiting queue) until the block fits or the sequence preempted itself.
2. Unless that step preempted something, waiting sequences are admitted in arrival order while
   fewer than `max_num_seqs` run, budget is left and their blocks fit. A newcomer first takes
   its leading cached full blocks (at most all but the last token, as vLLM: one token is
   always computed), then prefills the rest. The first one that does not fit stops admission
   (first come, first served: no overtaking).
3. Blocks that the step fills are hashed into the prefix cache when the step is scheduled (as
   vLLM v1 does), so a request admitted later in the same step already hits them.

After the step, every sequence whose tokens are all computed samples one token (see
sequence.py); it finishes on a stop token id (STOP), on max_tokens or at max_model_len
(LENGTH), and its blocks are freed (they stay cached until evicted). A preempted sequence
keeps its output so far and recomputes prompt + output when readmitted, usually from its own
still-cached blocks.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from basalt.ids import RequestId
from services.runtime.core.engine import FinishReason
from services.runtime.engines.sim.core.block_pool import BlockPool
from services.runtime.engines.sim.core.sequence import (
    TOKEN_CHUNK,
    Sequence,
    SequenceStatus,
    output_token_chunk,
)
from services.runtime.engines.sim.core.timing import StepLoad, attention_pairs

_RUNNING = SequenceStatus.RUNNING


@dataclass(slots=True)
class ScheduledBatch:
    """One step's work: each scheduled sequence with its new token count, and the cost load."""

    seqs: list[Sequence] = field(default_factory=list)
    num_new_tokens: list[int] = field(default_factory=list)
    load: StepLoad = field(default_factory=StepLoad)
    preempted: list[Sequence] = field(default_factory=list)


class Scheduler:
    """Waiting queue + running batch over one BlockPool."""

    def __init__(
        self,
        pool: BlockPool,
        *,
        max_num_seqs: int,
        max_num_batched_tokens: int,
        max_model_len: int,
        token_lo: int,
        token_span: int,
    ) -> None:
        self.pool = pool
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.max_model_len = max_model_len
        self.token_lo = token_lo
        self.token_span = token_span
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.requests: dict[RequestId, Sequence] = {}
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.requests)

    def add(self, seq: Sequence) -> None:
        self.requests[seq.req_id] = seq
        self.waiting.append(seq)

    def abort(self, req_id: RequestId) -> Sequence | None:
        """Drop a request wherever it is, freeing its blocks; None when unknown."""
        seq = self.requests.get(req_id)
        if seq is None:
            return None
        if seq.status is _RUNNING:
            self.running.remove(seq)
        else:
            self.waiting.remove(seq)
        self._finish(seq, FinishReason.ABORT)
        return seq

    # -- scheduling ------------------------------------------------------------------------

    def schedule(self) -> ScheduledBatch:
        batch = ScheduledBatch()
        budget = self._schedule_running(self.max_num_batched_tokens, batch)
        if not batch.preempted:
            self._admit_waiting(budget, batch)
        return batch

    def _schedule_running(self, budget: int, batch: ScheduledBatch) -> int:
        running, bs, load = self.running, self.pool.block_size, batch.load
        seqs, nums = batch.seqs, batch.num_new_tokens
        i = 0
        while i < len(running) and budget > 0:
            seq = running[i]
            computed = seq.num_computed_tokens
            num_new = len(seq.token_ids) - computed
            if (
                num_new == 1
                and computed >= seq.num_prompt_tokens
                and (computed + 1) % bs
                and computed < len(seq.block_ids) * bs
            ):  # fast path: a decode that needs no block and fills none (same as _schedule)
                seq.num_computed_tokens = computed + 1
                load.decode_seqs += 1
                load.decode_context_tokens += computed
                seqs.append(seq)
                nums.append(1)
                budget -= 1
                i += 1
                continue
            num_new = min(num_new, budget)
            if not self._allocate(seq, num_new) and not self._preempt_for(seq, num_new, batch):
                continue  # `seq` itself was preempted: running[i] is gone
            self._schedule(seq, num_new, batch)
            budget -= num_new
            i += 1
        return budget

    def _preempt_for(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> bool:
        """Preempt the newest running sequences until `seq` gets its blocks; False when `seq`
        itself had to go."""
        while True:
            victim = self.running.pop()
            self._preempt(victim)
            batch.preempted.append(victim)
            if victim is seq:
                return False
            if self._allocate(seq, num_new):
                return True

    def _admit_waiting(self, budget: int, batch: ScheduledBatch) -> None:
        pool, waiting, running, bs = self.pool, self.waiting, self.running, self.pool.block_size
        while waiting and budget > 0 and len(running) < self.max_num_seqs:
            seq = waiting[0]
            num_tokens = len(seq.token_ids)
            if len(seq.block_hashes) < num_tokens // bs:
                pool.extend_block_hashes(seq.token_ids, seq.block_hashes, seq.lora_name)
            hits = pool.get_cached_prefix(seq.block_hashes, (num_tokens - 1) // bs)
            num_computed = len(hits) * bs
            num_new = min(num_tokens - num_computed, budget)
            needed = -(-(num_computed + num_new) // bs) - len(hits)
            if not pool.can_allocate(needed, hits):
                break
            seq.block_ids = hits + pool.allocate(needed, hits)
            seq.num_computed_tokens = num_computed
            seq.num_registered_blocks = len(hits)
            if seq.num_cached_tokens < 0:
                seq.num_cached_tokens = num_computed
            waiting.popleft()
            seq.status = _RUNNING
            running.append(seq)
            self._schedule(seq, num_new, batch)
            budget -= num_new

    def _allocate(self, seq: Sequence, num_new: int) -> bool:
        """Give `seq` the blocks for `num_new` more tokens; False when too few are free."""
        needed = -(-(seq.num_computed_tokens + num_new) // self.pool.block_size) - len(
            seq.block_ids
        )
        if needed <= 0:
            return True
        if self.pool.num_free_blocks < needed:
            return False
        seq.block_ids += self.pool.allocate(needed)
        return True

    def _schedule(self, seq: Sequence, num_new: int, batch: ScheduledBatch) -> None:
        """Count the step's load, advance `seq`'s computed tokens and cache its full blocks."""
        start = seq.num_computed_tokens
        load = batch.load
        if num_new == 1 and start >= seq.num_prompt_tokens:
            load.decode_seqs += 1
            load.decode_context_tokens += start
        else:
            load.prefill_tokens += num_new
            load.prefill_attention_pairs += attention_pairs(start, num_new)
        seq.num_computed_tokens = computed = start + num_new
        full = computed // self.pool.block_size
        if full > seq.num_registered_blocks:
            pool = self.pool
            if len(seq.block_hashes) < full:
                pool.extend_block_hashes(seq.token_ids, seq.block_hashes, seq.lora_name)
            pool.cache_blocks(
                seq.block_ids,
                seq.block_hashes,
                seq.num_registered_blocks,
                full,
                seq.token_ids,
                seq.lora_name,
            )
            seq.num_registered_blocks = full
        batch.seqs.append(seq)
        batch.num_new_tokens.append(num_new)

    def _preempt(self, seq: Sequence) -> None:
        self.pool.free(seq.block_ids)
        seq.block_ids = []
        seq.num_computed_tokens = 0
        seq.num_registered_blocks = 0
        seq.status = SequenceStatus.WAITING
        seq.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.appendleft(seq)

    # -- after the step --------------------------------------------------------------------

    def complete(
        self, batch: ScheduledBatch, end_time: float
    ) -> tuple[dict[RequestId, int], list[Sequence]]:
        """Sample a token for each sequence whose tokens are all computed; finish those done.

        Returns the new token per request and the sequences that finished.
        """
        tokens: dict[RequestId, int] = {}
        finished: list[Sequence] = []
        lo, span, max_len = self.token_lo, self.token_span, self.max_model_len
        for seq in batch.seqs:
            ids = seq.token_ids
            n = len(ids)
            if seq.num_computed_tokens < n or seq.status is not _RUNNING:
                continue  # a prefill chunk that did not reach the end of the prompt
            offset = n - seq.token_chunk_start
            if offset >= TOKEN_CHUNK:
                seq.token_chunk = output_token_chunk(seq.token_seed, n // TOKEN_CHUNK, lo, span)
                seq.token_chunk_start = n - n % TOKEN_CHUNK
                offset = n % TOKEN_CHUNK
            token = seq.token_chunk[offset]
            ids.append(token)
            tokens[seq.req_id] = token
            if seq.first_token_time is None:
                seq.first_token_time = end_time
            if token in seq.stop_token_ids:
                self._finish(seq, FinishReason.STOP)
            elif n + 1 - seq.num_prompt_tokens >= seq.max_tokens or n + 1 >= max_len:
                self._finish(seq, FinishReason.LENGTH)
            else:
                continue
            finished.append(seq)
        if finished:
            self.running = [s for s in self.running if s.status is _RUNNING]
        return tokens, finished

    def _finish(self, seq: Sequence, reason: FinishReason) -> None:
        self.pool.free(seq.block_ids)
        seq.block_ids = []
        seq.status = SequenceStatus.FINISHED
        seq.finish_reason = reason
        del self.requests[seq.req_id]
