"""Request traces for the routing replay: a Mooncake JSON-lines parser and a seeded multi-turn
chat generator (pure; only `load_mooncake` reads a file).

A trace is a list of `TraceRequest`s sorted by arrival: the prompt as uint32 token ids (an
`array('I')`, 4 bytes a token: the full Mooncake trace is ~61M prompt tokens), how many tokens
to generate, and an optional session id (used by the `session` policy).

Mooncake (kvcache-ai/Mooncake, FAST'25 traces): one JSON object a line with `timestamp` (ms),
`input_length`, `output_length` and `hash_ids`, one id per 512-token block of the prompt.
Each id becomes 512 deterministic token ids (the same id gives the same tokens everywhere, so
two requests that share a leading run of ids share exactly that prefix); the last block is cut
to `input_length`.

`bounds` measures what caching could do for a trace at all: the oracle (unlimited cache) and
one LRU cache the size of a whole fleet.

Synthetic chat (`synthetic_chat`): a few shared system prompts, conversations that start as a
Poisson process, and turns whose prompt is the previous prompt + the previous answer + a new
user message. The previous answer is the simulator's own completion of the previous prompt
(`sim_completion`: the sim's output tokens are a pure function of seed and prompt), so, as
with a real engine, a follow-up turn can hit the blocks the answer left in the cache.
"""

from __future__ import annotations

import heapq
import json
import math
import random
from array import array
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path

from services.router.core.hashing import BlockHasher, chain_bytes, tokens_to_bytes
from services.runtime.engines.sim.core.sequence import output_token_id, request_token_seed

MOONCAKE_BLOCK_TOKENS = 512
VOCAB_SIZE = 32_000
TOKEN_LO = 100  # prompt token ids are drawn from [TOKEN_LO, VOCAB_SIZE): clear of special ids


class TraceFormatError(ValueError):
    """A trace line that cannot be read; names the line (1-based) and what is wrong."""

    def __init__(self, line: int, reason: str) -> None:
        super().__init__(f"trace line {line}: {reason}")
        self.line = line
        self.reason = reason


@dataclass(slots=True, frozen=True)
class TraceRequest:
    arrival_s: float
    prompt: array  # array('I') of token ids
    output_tokens: int
    session_id: str | None = None


@dataclass(slots=True, frozen=True)
class Trace:
    name: str
    requests: list[TraceRequest]  # sorted by arrival_s

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s - self.requests[0].arrival_s if self.requests else 0.0

    @property
    def prompt_tokens(self) -> int:
        return sum(len(r.prompt) for r in self.requests)

    @property
    def output_tokens(self) -> int:
        return sum(r.output_tokens for r in self.requests)


def limit_and_scale(trace: Trace, limit: int | None = None, rate_scale: float = 1.0) -> Trace:
    """The first `limit` requests, arrivals divided by `rate_scale` (2.0 = twice the rate)."""
    if not (rate_scale > 0 and math.isfinite(rate_scale)):
        raise ValueError(f"rate_scale must be a positive number, got {rate_scale}")
    if limit is not None and limit < 1:
        raise ValueError(f"limit must be >= 1, got {limit}")
    reqs = trace.requests[:limit] if limit else trace.requests
    if rate_scale != 1.0:
        reqs = [replace(r, arrival_s=r.arrival_s / rate_scale) for r in reqs]
    return Trace(trace.name, list(reqs))


def _random_tokens(
    rng: random.Random, n: int, lo: int = TOKEN_LO, vocab_size: int = VOCAB_SIZE
) -> array:
    """`n` token ids in [lo, vocab_size) from `rng` (fast: one randbytes call)."""
    span = vocab_size - lo
    raw = array("H", rng.randbytes(2 * n))
    return array("I", [lo + v % span for v in raw])


# -- Mooncake ------------------------------------------------------------------------------


class MooncakeBlocks:
    """The 512 token ids of each Mooncake hash id, made on first use and kept."""

    def __init__(self, block_tokens: int = MOONCAKE_BLOCK_TOKENS) -> None:
        self.block_tokens = block_tokens
        self._cache: dict[int, array] = {}

    def tokens(self, hash_id: int) -> array:
        found = self._cache.get(hash_id)
        if found is None:
            found = self._cache[hash_id] = _random_tokens(
                random.Random(hash_id * 0x9E3779B1 + 17), self.block_tokens
            )
        return found

    def prompt(self, hash_ids: list[int], input_length: int) -> array:
        out = array("I")
        for h in hash_ids:
            out += self.tokens(h)
        del out[input_length:]
        return out


def parse_mooncake(lines: Iterable[str], name: str = "mooncake") -> Trace:
    """A Mooncake trace from its JSON lines (blank lines skipped), sorted by timestamp."""
    blocks = MooncakeBlocks()
    reqs: list[TraceRequest] = []
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        ts, input_length, output_length, hash_ids = _mooncake_fields(n, line)
        reqs.append(
            TraceRequest(ts / 1000.0, blocks.prompt(hash_ids, input_length), output_length)
        )
    reqs.sort(key=lambda r: r.arrival_s)  # stable: ties keep file order
    return Trace(name, reqs)


def _mooncake_fields(n: int, line: str) -> tuple[float, int, int, list[int]]:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise TraceFormatError(n, f"not JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise TraceFormatError(n, "not a JSON object")
    for key in ("timestamp", "input_length", "output_length", "hash_ids"):
        if key not in row:
            raise TraceFormatError(n, f"missing {key!r}")
    ts, inp, out, ids = row["timestamp"], row["input_length"], row["output_length"], row["hash_ids"]
    if not isinstance(ts, (int, float)) or ts < 0:
        raise TraceFormatError(n, f"timestamp must be a number >= 0, got {ts!r}")
    for key, value in (("input_length", inp), ("output_length", out)):
        if not isinstance(value, int) or value < 1:
            raise TraceFormatError(n, f"{key} must be an integer >= 1, got {value!r}")
    if not isinstance(ids, list) or not all(isinstance(h, int) and h >= 0 for h in ids):
        raise TraceFormatError(n, "hash_ids must be a list of integers >= 0")
    needed = -(-inp // MOONCAKE_BLOCK_TOKENS)
    if len(ids) != needed:
        raise TraceFormatError(
            n, f"input_length {inp} needs {needed} hash_ids of {MOONCAKE_BLOCK_TOKENS} tokens, "
            f"got {len(ids)}"
        )
    return float(ts), inp, out, ids


def load_mooncake(path: Path) -> Trace:
    """Read a Mooncake JSON-lines trace file (does I/O)."""
    with open(path, encoding="utf-8") as f:
        return parse_mooncake(f, name=Path(path).name)


# -- synthetic multi-turn chat -------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class ChatWorkload:
    """A seeded multi-turn chat workload. Token counts are means (uniform over 0.5x..1.5x)."""

    conversations: int = 1200
    rate: float = 4.0  # conversations started per second (Poisson)
    min_turns: int = 2
    max_turns: int = 8
    system_prompts: int = 4
    system_tokens: int = 1500
    first_message_tokens: int = 800  # e.g. a pasted document
    message_tokens: int = 150
    answer_tokens: int = 250
    think_s: float = 20.0  # mean wait between a turn and the next (exponential)
    seed: int = 0
    # Prompt token ids are drawn from [prompt_token_lo, vocab_size).
    prompt_token_lo: int = TOKEN_LO
    # The simulator's seed, vocabulary and output range: answers are its completions (see
    # sim_completion), so these must be the replicas' (a byte-tokenizer replica: vocab 259).
    vocab_size: int = VOCAB_SIZE
    sim_seed: int = 0
    sim_min_output_token_id: int = 100

    def __post_init__(self) -> None:
        if self.conversations < 1 or self.system_prompts < 1:
            raise ValueError("conversations and system_prompts must be >= 1")
        if not 1 <= self.min_turns <= self.max_turns:
            raise ValueError(f"need 1 <= min_turns <= max_turns, got {self.min_turns}..{self.max_turns}")
        if not (self.rate > 0 and self.think_s >= 0):
            raise ValueError("rate must be > 0 and think_s >= 0")
        lengths = (self.system_tokens, self.first_message_tokens, self.message_tokens, self.answer_tokens)
        if min(lengths) < 1:
            raise ValueError("token counts must be >= 1")
        if not 0 <= self.prompt_token_lo < self.vocab_size:
            raise ValueError("need 0 <= prompt_token_lo < vocab_size")


def sim_completion(prompt: array, n: int, seed: int, lo: int, vocab_size: int) -> array:
    """The `n` tokens the simulator generates for `prompt` with `seed` (no stop tokens)."""
    token_seed = request_token_seed(seed, prompt)  # type: ignore[arg-type]  # any int sequence
    start, span = len(prompt), vocab_size - lo
    return array("I", [output_token_id(token_seed, start + i, lo, span) for i in range(n)])


def _around(rng: random.Random, mean: int) -> int:
    return max(1, round(mean * rng.uniform(0.5, 1.5)))


def _conversation(
    w: ChatWorkload, c: int, start_s: float, system: array, rng: random.Random
) -> Iterator[TraceRequest]:
    """The turns of conversation `c`, each prompt extending the last prompt and its answer."""
    session = f"conv-{c}"
    lo, vocab = w.prompt_token_lo, w.vocab_size
    prompt = system + _random_tokens(rng, _around(rng, w.first_message_tokens), lo, vocab)
    t = start_s
    for turn in range(rng.randint(w.min_turns, w.max_turns)):
        out = _around(rng, w.answer_tokens)
        yield TraceRequest(t, prompt, out, session)
        answer = sim_completion(prompt, out, w.sim_seed, w.sim_min_output_token_id, vocab)
        prompt = prompt + answer + _random_tokens(rng, _around(rng, w.message_tokens), lo, vocab)
        t += rng.expovariate(1.0 / w.think_s) if w.think_s > 0 else 0.0


def synthetic_chat(w: ChatWorkload) -> Trace:
    """The requests of `w`, sorted by arrival (deterministic for a given `w`)."""
    rng = random.Random(w.seed)
    systems = [
        _random_tokens(rng, _around(rng, w.system_tokens), w.prompt_token_lo, w.vocab_size)
        for _ in range(w.system_prompts)
    ]
    convs: list[list[TraceRequest]] = []
    t = 0.0
    for c in range(w.conversations):
        conv_rng = random.Random(rng.getrandbits(64))
        convs.append(list(_conversation(w, c, t, systems[rng.randrange(w.system_prompts)], conv_rng)))
        t += rng.expovariate(w.rate)
    merged = heapq.merge(*convs, key=lambda r: r.arrival_s)
    return Trace(f"synthetic chat ({w.conversations} conversations, seed {w.seed})", list(merged))


# -- what caching could do -----------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class TraceBounds:
    """What caching could do for a trace, whatever the routing."""

    # One replica with unlimited KV cache holding every block (prompt and completion) of every
    # earlier request; at most all but the last prompt token hits, as in vLLM. No policy on
    # any fleet of the simulator can beat it.
    oracle_hit_ratio: float
    # One LRU cache as large as the whole fleet's: what pooling the fleet's memory would give.
    # A reference, not a bound (LRU is not optimal).
    pooled_lru_hit_ratio: float
    distinct_prompt_blocks: int


def bounds(
    trace: Trace, hashes: list[array], skip: list[bool], block_size: int, capacity_blocks: int,
    sim_seed: int, sim_lo: int, sim_vocab_size: int,
) -> TraceBounds:
    """Hit ratios of the oracle and of a pooled LRU cache of `capacity_blocks`, over the
    requests not skipped; `hashes` are the router's own hashes of each prompt's full blocks."""
    bs, template = block_size, BlockHasher().template(None)
    seen: set[int] = set()
    lru: OrderedDict[int, None] = OrderedDict()
    prompt_blocks: set[int] = set()
    oracle = pooled = total = 0
    for r, own, skipped in zip(trace.requests, hashes, skip):
        if skipped:
            continue
        cap = min(len(own), (len(r.prompt) - 1) // bs)
        oracle += _leading(own, seen, cap) * bs
        pooled += _leading(own, lru, cap) * bs
        total += len(r.prompt)
        prompt_blocks.update(own)
        tail = r.prompt[len(own) * bs :] + sim_completion(
            r.prompt, r.output_tokens, sim_seed, sim_lo, sim_vocab_size
        )
        parent = own[-1] if own else None
        blocks = [*own, *chain_bytes(tokens_to_bytes(tail), bs, len(tail) // bs, template, parent)]
        seen.update(blocks)
        for h in blocks:
            lru[h] = None
            lru.move_to_end(h)
        while len(lru) > capacity_blocks:
            lru.popitem(last=False)
    if not total:
        return TraceBounds(0.0, 0.0, 0)
    return TraceBounds(oracle / total, pooled / total, len(prompt_blocks))


def _leading(own: array, cached: set[int] | OrderedDict[int, None], cap: int) -> int:
    k = 0
    while k < cap and own[k] in cached:
        k += 1
    return k
