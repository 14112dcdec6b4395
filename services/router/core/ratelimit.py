"""Per-key request rate and concurrency limits (no I/O; time is an argument).

Each inference key may carry a rate (requests per second, a token bucket whose burst is two
seconds' worth, at least one request) and a concurrency limit (requests in flight at once).
`admit` answers None (go; the request now counts as in flight until `release`) or the
seconds after which a retry can succeed (the caller answers 429 with `Retry-After`).
State is kept per key id for at most `max_keys` keys, least recently used dropped first (a
dropped key starts again with a full bucket: never more than its burst early).
"""

from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

from services.router.core.errors import RateLimited

BURST_S = 2.0


@dataclass(slots=True)
class _KeyState:
    tokens: float
    last: float
    inflight: int = 0


class KeyLimits:
    def __init__(self, max_keys: int = 10_000) -> None:
        self.max_keys = max_keys
        self._keys: OrderedDict[str, _KeyState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def inflight(self, key_id: str) -> int:
        st = self._keys.get(key_id)
        return st.inflight if st else 0

    def admit(self, key_id: str, rate_per_s: float, max_concurrency: int,
              now: float) -> float | None:
        if rate_per_s <= 0 and max_concurrency <= 0:
            return None
        burst = max(1.0, rate_per_s * BURST_S)
        st = self._keys.get(key_id)
        if st is None:
            st = self._keys[key_id] = _KeyState(tokens=burst, last=now)
            while len(self._keys) > self.max_keys:
                self._keys.popitem(last=False)
        self._keys.move_to_end(key_id)
        if rate_per_s > 0:
            st.tokens = min(burst, st.tokens + max(0.0, now - st.last) * rate_per_s)
        st.last = now
        if max_concurrency > 0 and st.inflight >= max_concurrency:
            return 1.0
        if rate_per_s > 0:
            if st.tokens < 1.0:
                return max(0.001, (1.0 - st.tokens) / rate_per_s)
            st.tokens -= 1.0
        st.inflight += 1
        return None

    def refusal(self, key_id: str, rate_per_s: float, max_concurrency: int,
                now: float) -> RateLimited | None:
        """`admit`, as the error both doors answer with when the key is over a limit."""
        wait = self.admit(key_id, rate_per_s, max_concurrency, now)
        if wait is None:
            return None
        return RateLimited(f"API key {key_id} is over its limit of {rate_per_s:g} requests/s "
                           f"or {max_concurrency} in flight; retry in "
                           f"{retry_after_header(wait)} s", wait)

    def release(self, key_id: str) -> None:
        st = self._keys.get(key_id)
        if st is not None and st.inflight > 0:
            st.inflight -= 1


def retry_after_header(seconds: float) -> str:
    """Whole seconds, rounded up, at least 1 (Retry-After takes an integer)."""
    return str(max(1, math.ceil(seconds)))
