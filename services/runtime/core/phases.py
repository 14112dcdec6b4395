"""A replica's start phases: parsed from the environment, named durations, one summary line (no I/O).

The control plane stamps the phases before the process exists (placed, fetched, launched) and
passes them in `BASALT_START_*` / `BASALT_RUNTIME_LAUNCHED_TS`; the runtime stamps the rest
(loaded, engine, ready, first token). Timestamps are wall-clock seconds; 0 means "did not happen
or unknown", and a duration is shown only when both of its ends are known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from basalt.pb import events_pb2

ENV_LAUNCHED_TS = "BASALT_RUNTIME_LAUNCHED_TS"
ENV_PLACED_TS = "BASALT_START_PLACED_TS"
ENV_FETCHED_TS = "BASALT_START_FETCHED_TS"
ENV_FETCHED_BYTES = "BASALT_START_FETCHED_BYTES"
ENV_TIER = "BASALT_START_TIER"
ENV_WEIGHTS_REVISION = "BASALT_START_WEIGHTS_REVISION"

# Where the weights were found (see events.proto StartPhases.tier).
TIERS = ("source", "node", "warm", "")

# Duration keys, in start order (also the `phase` label of the metrics), and how a user reads them.
PHASES = ("fetch", "launch", "load", "engine_init", "ready", "first_token")
PHASE_TITLES = {"fetch": "fetch", "launch": "launch", "load": "load",
                "engine_init": "engine init", "ready": "ready", "first_token": "first token"}


def _float(env: Mapping[str, str], key: str) -> float:
    try:
        value = float(env.get(key, "") or 0.0)
    except ValueError:
        return 0.0
    return value if math.isfinite(value) and value > 0 else 0.0


def _int(env: Mapping[str, str], key: str) -> int:
    try:
        value = int(env.get(key, "") or 0)
    except ValueError:
        return 0
    return max(value, 0)


def format_bytes(n: float) -> str:
    """Decimal units, one decimal: `0 B`, `512 B`, `2.4 GB`."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            break
    return f"{n:.1f} {unit}"


@dataclass(slots=True)
class StartPhases:
    """One replica start, as `events_pb2.StartPhases` carries it, plus the weights revision."""

    placed_ts: float = 0.0
    fetched_ts: float = 0.0
    fetched_bytes: int = 0
    tier: str = ""
    launched_ts: float = 0.0
    loaded_ts: float = 0.0
    weights_bytes: int = 0
    load_bytes_per_s: float = 0.0
    engine_ts: float = 0.0
    ready_ts: float = 0.0
    first_token_ts: float = 0.0
    weights_revision: str = ""

    @classmethod
    def from_env(cls, env: Mapping[str, str], now: float) -> StartPhases:
        """The control plane's stamps; a missing or bad value is 0 (never raises). With no
        launch stamp, `now` (this process's start) is the launch, as before these phases."""
        return cls(
            placed_ts=_float(env, ENV_PLACED_TS),
            fetched_ts=_float(env, ENV_FETCHED_TS),
            fetched_bytes=_int(env, ENV_FETCHED_BYTES),
            tier=env.get(ENV_TIER, "").strip().lower(),
            launched_ts=_float(env, ENV_LAUNCHED_TS) or now,
            weights_revision=env.get(ENV_WEIGHTS_REVISION, "").strip(),
        )

    @classmethod
    def from_dict(cls, d: Mapping[str, object], weights_revision: str = "") -> StartPhases:
        """From a StartPhases as JSON (MessageToDict: camelCase, or snake_case with
        preserving_proto_field_name); unknown or bad values are 0."""
        def get(name: str) -> object:
            head, *rest = name.split("_")
            camel = head + "".join(p.title() for p in rest)
            return d.get(name, d.get(camel, 0))

        def num(name: str) -> float:
            try:
                value = float(get(name) or 0)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                return 0.0
            return value if math.isfinite(value) and value > 0 else 0.0

        return cls(
            placed_ts=num("placed_ts"), fetched_ts=num("fetched_ts"),
            fetched_bytes=int(num("fetched_bytes")), tier=str(get("tier") or ""),
            launched_ts=num("launched_ts"), loaded_ts=num("loaded_ts"),
            weights_bytes=int(num("weights_bytes")), load_bytes_per_s=num("load_bytes_per_s"),
            engine_ts=num("engine_ts"), ready_ts=num("ready_ts"),
            first_token_ts=num("first_token_ts"), weights_revision=weights_revision,
        )

    def mark_loaded(self, ts: float, nbytes: int, seconds: float) -> None:
        """The weights (`nbytes`, read in `seconds`) are in host memory at `ts`; nothing read
        leaves the phase unset."""
        if nbytes <= 0:
            return
        self.loaded_ts = ts
        self.weights_bytes = nbytes
        self.load_bytes_per_s = nbytes / seconds if seconds > 0 else 0.0

    @property
    def started_ts(self) -> float:
        """Where the cold start begins: placement when the control plane stamped it (so the
        fetch counts), else the launch."""
        return self.placed_ts or self.launched_ts

    def cold_start_s(self) -> float | None:
        """Start to first READY; None until ready."""
        if not self.ready_ts or not self.started_ts:
            return None
        return max(self.ready_ts - self.started_ts, 0.0)

    def durations(self) -> dict[str, float]:
        """Each phase whose ends are both known, in start order, in seconds (clock skew
        between the control plane's host and this one is clamped to 0)."""
        spans = {
            "fetch": (self.placed_ts, self.fetched_ts),
            "launch": (self.fetched_ts or self.placed_ts, self.launched_ts),
            "load": (self.launched_ts, self.loaded_ts),
            "engine_init": (self.loaded_ts or self.launched_ts, self.engine_ts),
            "ready": (self.engine_ts, self.ready_ts),
            "first_token": (self.ready_ts, self.first_token_ts),
        }
        return {name: max(end - begin, 0.0) for name, (begin, end) in spans.items()
                if begin > 0 and end > 0}

    def summary(self) -> str:
        """One line: `fetch 0.0s (node, 0 B) · load 2.1s (2.4 GB @ 1.1 GB/s) · engine init
        38.2s · ready 0.1s (cold start 41.2s) · first token 0.4s after ready`."""
        parts = []
        for name, s in self.durations().items():
            text = f"{PHASE_TITLES[name]} {s:.1f}s"
            if name == "fetch":
                text += f" ({self.tier or 'in place'}, {format_bytes(self.fetched_bytes)})"
            elif name == "load":
                rate = format_bytes(self.load_bytes_per_s)
                text += f" ({format_bytes(self.weights_bytes)} @ {rate}/s)"
            elif name == "ready" and (total := self.cold_start_s()) is not None:
                text += f" (cold start {total:.1f}s)"
            elif name == "first_token":
                text += " after ready"
            parts.append(text)
        return " · ".join(parts) or "-"

    def to_proto(self) -> events_pb2.StartPhases:
        return events_pb2.StartPhases(
            placed_ts=self.placed_ts, fetched_ts=self.fetched_ts,
            fetched_bytes=self.fetched_bytes, tier=self.tier, launched_ts=self.launched_ts,
            loaded_ts=self.loaded_ts, weights_bytes=self.weights_bytes,
            load_bytes_per_s=self.load_bytes_per_s, engine_ts=self.engine_ts,
            ready_ts=self.ready_ts, first_token_ts=self.first_token_ts,
        )
