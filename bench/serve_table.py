"""`basalt bench serve`'s figures: vLLM bench's result JSON read into rows, the side-by-side
markdown table with ratios, and the issue's aims checked (no I/O)."""

from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["AIMS", "Row", "aims", "kv_cache_tokens", "markdown", "parse_rates", "parse_result", "rate_label"]

SIDE_NAMES = {"vllm": "`vllm serve`", "basalt": "basalt"}
# The aims: basalt vs `vllm serve`.
AIMS = {"throughput_ratio": 0.97, "ttft_p50_extra_ms": 5.0, "itl_p99_ratio": 2.0}
HEADER = ("| load | server | req/s | output tok/s | failed | TTFT p50 (ms) | TTFT p99 (ms) "
          "| ITL p50 (ms) | ITL p99 (ms) | TPOT p50 (ms) | load (1 min) |")


@dataclass(slots=True)
class Row:
    """One `vllm bench serve` run: one side at one load. Times in ms."""

    side: str  # "vllm" or "basalt"
    rate: float  # requests/s asked for; inf = all at once
    completed: int
    failed: int
    request_throughput: float
    output_throughput: float
    ttft_p50: float
    ttft_p99: float
    itl_p50: float
    itl_p99: float
    tpot_p50: float | None
    # The machine's 1-minute load average as the run ended (others' work shows here).
    load_1m: float | None = None
    errors: dict[str, int] = field(default_factory=dict)  # first error line -> requests
    notes: list[str] = field(default_factory=list)  # the bench's warnings worth keeping

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["rate"] = "inf" if math.isinf(self.rate) else self.rate
        return d


def parse_rates(text: str) -> list[float]:
    """"inf,8,4" -> [inf, 8.0, 4.0]; a rate must be positive."""
    rates = []
    for part in text.split(","):
        rate = float(part.strip())
        if not rate > 0:
            raise ValueError(f"a request rate must be > 0 (or inf), got {part!r}")
        rates.append(rate)
    if not rates:
        raise ValueError("no request rate given")
    return rates


def rate_label(rate: float) -> str:
    return "all at once" if math.isinf(rate) else f"{rate:g} req/s"


def _metric(data: dict[str, Any], name: str, pct: str) -> float:
    for key in (f"p{pct}_{name}_ms", f"median_{name}_ms" if pct == "50" else ""):
        if key and data.get(key) is not None:
            return float(data[key])
    raise KeyError(f"the bench result has no p{pct} of {name} (ask --metric-percentiles 50,99)")


def _first_line(error: str) -> str:
    lines = [x.strip() for x in error.strip().splitlines() if x.strip()]
    return (lines[-1] if lines else "")[:160]  # a traceback's last line names the error


def parse_result(side: str, rate: float, data: dict[str, Any]) -> Row:
    """A Row from the JSON `vllm bench serve --save-result` writes."""
    errors = Counter(_first_line(e) for e in data.get("errors") or [] if e)
    tpot = data.get("p50_tpot_ms", data.get("median_tpot_ms"))
    return Row(side=side, rate=rate, completed=int(data["completed"]),
               failed=int(data.get("failed", 0)),
               request_throughput=float(data["request_throughput"]),
               output_throughput=float(data["output_throughput"]),
               ttft_p50=_metric(data, "ttft", "50"), ttft_p99=_metric(data, "ttft", "99"),
               itl_p50=_metric(data, "itl", "50"), itl_p99=_metric(data, "itl", "99"),
               tpot_p50=None if tpot is None else float(tpot), errors=dict(errors))


def kv_cache_tokens(log: str) -> int | None:
    """The KV cache vLLM sized at start, in tokens, from its log ("CPU KV cache size:
    1,077,632 tokens"; "GPU ..." on a GPU), or None when the log does not say."""
    found = re.findall(r"[A-Z]+ KV cache size: ([\d,]+) tokens", log)
    return int(found[-1].replace(",", "")) if found else None


def _ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    return f"{a / b:.2f}×"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.1f}"


def _pairs(rows: list[Row]) -> list[tuple[float, Row | None, Row | None]]:
    """(rate, vllm row, basalt row) per load, in the order the loads first ran."""
    rates = list(dict.fromkeys(r.rate for r in rows))
    by = {(r.side, r.rate): r for r in rows}
    return [(q, by.get(("vllm", q)), by.get(("basalt", q))) for q in rates]


def _line(load: str, r: Row) -> str:
    return (f"| {load} | {SIDE_NAMES.get(r.side, r.side)} | {r.request_throughput:.2f} | "
            f"{r.output_throughput:.0f} | {r.failed} | {_ms(r.ttft_p50)} | {_ms(r.ttft_p99)} | "
            f"{_ms(r.itl_p50)} | {_ms(r.itl_p99)} | {_ms(r.tpot_p50)} | {_ms(r.load_1m)} |")


def _ratio_line(load: str, v: Row, b: Row) -> str:
    extra = b.ttft_p50 - v.ttft_p50
    return (f"| {load} | basalt ÷ `vllm serve` | {_ratio(b.request_throughput, v.request_throughput)} | "
            f"{_ratio(b.output_throughput, v.output_throughput)} | {b.failed} vs {v.failed} | "
            f"{_ratio(b.ttft_p50, v.ttft_p50)} ({extra:+.1f} ms) | {_ratio(b.ttft_p99, v.ttft_p99)} | "
            f"{_ratio(b.itl_p50, v.itl_p50)} | {_ratio(b.itl_p99, v.itl_p99)} | "
            f"{_ratio(b.tpot_p50, v.tpot_p50)} | |")


def table(rows: list[Row]) -> str:
    out = [HEADER, "|---|---|---|---|---|---|---|---|---|---|---|"]
    for rate, v, b in _pairs(rows):
        load = rate_label(rate)
        out += [_line(load, r) for r in (v, b) if r is not None]
        if v is not None and b is not None:
            out.append(_ratio_line(load, v, b))
    return "\n".join(out)


def aims(rows: list[Row]) -> list[str]:
    """One line per load: each of the issue's aims, met or missed."""
    out = []
    for rate, v, b in _pairs(rows):
        if v is None or b is None:
            continue
        checks = [f"throughput {b.request_throughput / v.request_throughput:.2f}× "
                  f"(≥ {AIMS['throughput_ratio']}×: "
                  f"{_met(b.request_throughput >= AIMS['throughput_ratio'] * v.request_throughput)})"
                  if v.request_throughput else "throughput -"]
        if not math.isinf(rate):
            extra = b.ttft_p50 - v.ttft_p50
            checks.append(f"TTFT p50 {extra:+.1f} ms (≤ +{AIMS['ttft_p50_extra_ms']:g} ms: "
                          f"{_met(extra <= AIMS['ttft_p50_extra_ms'])})")
            if v.itl_p99:
                ratio = b.itl_p99 / v.itl_p99
                checks.append(f"ITL p99 {ratio:.2f}× (≤ {AIMS['itl_p99_ratio']:g}×: "
                              f"{_met(ratio <= AIMS['itl_p99_ratio'])})")
        checks.append(f"failed {b.failed} ({_met(b.failed == 0)})")
        out.append(f"- {rate_label(rate)}: " + "; ".join(checks))
    return out


def _met(ok: bool) -> str:
    return "met" if ok else "MISSED"


def markdown(rows: list[Row], *, cmd: str, machine: str, vllm: str, serve_args: list[str],
             engine: dict[str, Any], loras: dict[str, str], num_prompts: int, input_len: int,
             output_len: int, kv_tokens: dict[str, int | None] | None = None) -> str:
    """The section body: how it ran, the table, the aims, both sides' engine settings."""
    load = (f"Load: vLLM's own `vllm bench serve` (unmodified), random dataset, {num_prompts} "
            f"prompts of {input_len} tokens, {output_len} output tokens (ignore_eos), "
            "`--backend openai-chat` on `/v1/chat/completions`, `--temperature 0`, seed 0, one "
            "warm-up request per run; `vllm serve` first, then basalt, never at once.  ")
    out = [f"Command: `{cmd}`  ", f"Machine: {machine}; {vllm}, CPU build.  ", load,
           "*load (1 min)*: the machine's load average as the run ended (the CPUs' other work)."]
    if num_prompts < 100:
        out += ["", (f"**Smoke run** ({num_prompts} prompts, fewer than the 100 the issue "
                     "measures with): the figures show the benchmark works, not how the sides "
                     "compare.")]
    out += ["", table(rows), ""]
    if found := aims(rows):
        out += [("Aims (basalt vs `vllm serve`: throughput ≥ 0.97×; at fixed rates TTFT p50 "
                 "within +5 ms and ITL p99 within 2×; no failed request):"), "", *found, ""]
    out += _notes(rows)
    for r in rows:
        for error, n in sorted(r.errors.items()):
            out.append(f"- {SIDE_NAMES.get(r.side, r.side)} at {rate_label(r.rate)}: {n} × "
                       f"`{error}`")
    settings = ", ".join(f"{k}={v}" for k, v in engine.items() if k != "model")
    ours = (f"- basalt: the runtime's `VllmConfig` for this deployment ({settings}; "
            f"LoRA at start: {', '.join(sorted(loras)) or 'none'}), given to AsyncLLM with "
            "prefix caching on, log stats off and KV events to the runtime's zmq socket;")
    peer = (f"- `vllm serve`: `vllm {' '.join(_quote(a) for a in serve_args)}` (KV events "
            "published to an ipc socket nobody reads).")
    out += ["", "Engine settings, the same on both sides:", "", ours, peer]
    if kv_tokens:
        sizes = ", ".join(f"{SIDE_NAMES.get(k, k)} {v:,}" if v else f"{SIDE_NAMES.get(k, k)} -"
                          for k, v in kv_tokens.items())
        out.append(f"- KV cache vLLM sized at start, in tokens: {sizes} (the memory share is "
                   "of what was free then, so it moves with the machine's other work).")
    return "\n".join(out) + "\n"


def _notes(rows: list[Row]) -> list[str]:
    """The bench's warnings, read. Its /tokenize check only re-aligns prompts where a server's
    tokenizer disagrees with the bench's: without a mismatch both sides got the same prompts."""
    mismatch = any("tokenizer mismatch" in n for r in rows for n in r.notes)
    out = []
    for r in rows:
        for note in r.notes:
            if "/tokenize unavailable" in note and not mismatch:
                continue
            out.append(f"- {SIDE_NAMES.get(r.side, r.side)} at {rate_label(r.rate)}: "
                       f"bench said `{note}`")
    if not mismatch and any("/tokenize unavailable" in n for r in rows for n in r.notes):
        out.append("- basalt has no `/tokenize`, so vLLM's bench skipped its prompt check "
                   "there; no server reported a tokenizer mismatch: both sides got the same "
                   "prompts.")
    return out


def _quote(arg: str) -> str:
    return f"'{arg}'" if any(c in arg for c in " {}\"") else arg
