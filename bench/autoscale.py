"""`basalt bench autoscale`: replays request traces through four autoscaling policies over a
virtual-time fleet and reports SLO attainment against replica-seconds (does I/O: reads the
traces, prints, writes JSON and the markdown section; the fleet is `bench/autoscale_sim.py`).

Policies: `static-peak` (a fixed fleet, the smallest that meets the SLO in the trace's peak
minute), `kpa` (Knative KPA defaults), `baseten` (Baseten's defaults) and `basalt-sla` (SLA
mode with a profiled capacity prior); the last three run the real decision core,
`services/autoscaler/core/decide.py`, once a second.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import random
import shlex
import sys
import time
from bisect import bisect_left
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from services.autoscaler.core.settings import Mode, Settings
from services.autoscaler.core.signals import Capacity
from services.runtime.engines.sim.core.timing import StepLoad, attention_pairs, step_duration

from .autoscale_sim import FleetParams, Policy, Result, Workload, simulate
from .report import machine_line, update_section

SECTION = "## Autoscaling (basalt bench autoscale)"
MAX_REPLICA = 200
SLA_SCALE_DOWN_DELAY_S = 120.0
PROFILE_S = 120.0  # each profiling run: this long at one rate, one replica
ATTAIN = 0.99  # static sizing: this share of the requests that can meet the SLO at all
PROFILE_ATTAIN = 0.90  # profiling: p90 within the SLO, as the core's p90 targets
_DEFAULTS = FleetParams()


class TraceError(ValueError):
    pass


# -- traces ----------------------------------------------------------------------------------


def _azure(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        need = {"TIMESTAMP", "ContextTokens", "GeneratedTokens"}
        if not reader.fieldnames or not need <= set(reader.fieldnames):
            raise TraceError(f"{path}: an Azure trace needs the columns {sorted(need)}, "
                             f"got {reader.fieldnames}")
        for n, r in enumerate(reader, start=2):
            try:
                ts = datetime.fromisoformat(r["TIMESTAMP"].strip()[:26]).timestamp()
                rows.append((ts, int(r["ContextTokens"]), int(r["GeneratedTokens"])))
            except (TypeError, ValueError) as e:
                raise TraceError(f"{path}:{n}: bad row {dict(r)}: {e}") from None
    return rows


def _mooncake(path: Path) -> list[tuple[float, int, int]]:
    rows = []
    with path.open(encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                o = json.loads(line)
                rows.append((float(o["timestamp"]) / 1000, int(o["input_length"]),
                             int(o["output_length"])))
            except (ValueError, KeyError, TypeError) as e:
                raise TraceError(f"{path}:{n}: not a Mooncake line ({e!r})") from None
    return rows


def load_trace(path: Path, minutes: float | None = None, time_scale: float = 1.0,
               load_scale: int = 1) -> Workload:
    """Arrivals from 0 s, divided by `time_scale`; each request `load_scale` times (copy j
    j/load_scale s later); cut to the first `minutes` (after scaling)."""
    if path.suffix == ".csv":
        rows = _azure(path)
    elif path.suffix in (".jsonl", ".json"):
        rows = _mooncake(path)
    else:
        raise TraceError(f"{path}: want an Azure .csv or a Mooncake .jsonl trace")
    if any(p < 0 or o < 0 for _, p, o in rows):
        raise TraceError(f"{path}: negative token counts")
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    out = [((t - t0) / time_scale + j / load_scale, p, max(1, o))
           for t, p, o in rows for j in range(load_scale)]
    out.sort()
    if minutes is not None:
        out = [r for r in out if r[0] < minutes * 60]
    if not out:
        raise TraceError(f"{path}: no requests")
    return Workload([r[0] for r in out], [max(1, r[1]) for r in out], [r[2] for r in out])


# -- profiling -------------------------------------------------------------------------------


def idle_ttft_s(fp: FleetParams, prompt: int) -> float:
    """First-token time of one request alone on an idle replica (chunked prefill)."""
    t, have = 0.0, 0
    while have < prompt:
        c = min(prompt - have, fp.max_num_batched_tokens)
        t += step_duration(fp.profile, StepLoad(c, attention_pairs(have, c)))
        have += c
    return t


def attainable(w: Workload, fp: FleetParams) -> list[bool]:
    return [idle_ttft_s(fp, p) * 1000 <= fp.ttft_slo_ms for p in w.prompt]


def attainment(w: Workload, r: Result, fp: FleetParams, idx: range | None = None
               ) -> tuple[float, float]:
    """(TTFT, ITL) SLO attainment over `idx` (all requests by default)."""
    o = r.outcome
    idx = idx if idx is not None else range(len(w))
    ttft = itl = 0
    for i in idx:
        if o.rejected[i] or o.first[i] < 0:
            continue
        ttft += (o.first[i] - w.arrival[i]) * 1000 <= fp.ttft_slo_ms
        out = w.output[i]
        itl += out <= 1 or (o.finish[i] - o.first[i]) * 1000 / (out - 1) <= fp.itl_slo_ms
    n = max(1, len(idx))
    return ttft / n, itl / n


def _poisson(mix: Workload, rate: float, seconds: float, seed: int,
             prefill_only: bool) -> Workload:
    rng = random.Random(seed)
    arr, pr, ou, t, k = [], [], [], 0.0, 0
    while True:
        t += rng.expovariate(rate)
        if t >= seconds:
            break
        i = rng.randrange(len(mix))
        arr.append(t)
        pr.append(mix.prompt[i])
        ou.append(1 if prefill_only else mix.output[i])
        k += 1
    return Workload(arr, pr, ou)


def _meets(fp: FleetParams, w: Workload, replicas: int, idx: range | None = None,
           share: float = ATTAIN) -> bool:
    """At least `share` of the requests in `idx` that can meet the SLOs at all do."""
    r = simulate(w, fp, Policy("probe", static=replicas))
    ok = attainable(w, fp)
    sel = [i for i in (idx if idx is not None else range(len(w))) if ok[i]]
    if not sel:
        return True
    o = r.outcome
    ttft = sum((o.first[i] - w.arrival[i]) * 1000 <= fp.ttft_slo_ms for i in sel if o.first[i] >= 0)
    itl = sum(w.output[i] <= 1 or (o.finish[i] - o.first[i]) * 1000 / (w.output[i] - 1)
              <= fp.itl_slo_ms for i in sel if o.first[i] >= 0)
    return min(ttft, itl) >= share * len(sel)


def _max_rate(fp: FleetParams, mix: Workload, prefill_only: bool) -> tuple[float, Workload]:
    """The largest Poisson request rate one replica serves within the SLO (bisection)."""
    lo, hi = 0.0, 0.25
    while hi < 1e4 and _meets(fp, _poisson(mix, hi, PROFILE_S, 1, prefill_only), 1,
                              share=PROFILE_ATTAIN):
        lo, hi = hi, hi * 2
    for _ in range(10):
        mid = (lo + hi) / 2
        if _meets(fp, _poisson(mix, mid, PROFILE_S, 1, prefill_only), 1, share=PROFILE_ATTAIN):
            lo = mid
        else:
            hi = mid
    rate = max(lo, 1e-3)
    return rate, _poisson(mix, rate, PROFILE_S, 1, prefill_only)


def profile(fp: FleetParams, w: Workload) -> dict[str, float]:
    """What one replica carries within the SLO on this trace's request mix: prefill tokens/s
    (prompt-only load), decode tokens/s (the largest decode batch whose step meets the ITL
    target) and the concurrency of a mixed load at its largest rate (the concurrency target)."""
    step = max(1, len(w) // 2000)
    mix = Workload(w.arrival[::step], w.prompt[::step], w.output[::step])
    p_rate, _ = _max_rate(fp, mix, prefill_only=True)
    mean_p = sum(mix.prompt) / len(mix)
    mean_o = sum(mix.output) / len(mix)
    best = 0.0
    for n in range(1, fp.max_num_seqs + 1):
        if n * (mean_p + mean_o) > fp.kv_tokens:
            break
        d = step_duration(fp.profile, StepLoad(decode_seqs=n,
                                               decode_context_tokens=int(n * (mean_p + mean_o / 2))))
        if d * 1000 <= fp.itl_slo_ms:
            best = max(best, n / d)
    m_rate, m_w = _max_rate(fp, mix, prefill_only=False)
    r = simulate(m_w, fp, Policy("probe", static=1))
    busy = sum(r.outcome.finish[i] - m_w.arrival[i] for i in range(len(m_w)))
    return {"prefill_tokens_per_s": p_rate * mean_p, "decode_tokens_per_s": best,
            "mixed_rate_per_s": m_rate, "concurrency": busy / PROFILE_S}


def _need(w: Workload, cap: Capacity, lo: float, hi: float) -> float:
    i, j = bisect_left(w.arrival, lo), bisect_left(w.arrival, hi)
    span = hi - lo
    return (sum(w.prompt[i:j]) / span / cap.prefill_tokens_per_s
            + sum(w.output[i:j]) / span / cap.decode_tokens_per_s)


def static_peak(fp: FleetParams, w: Workload, cap: Capacity) -> tuple[int, float]:
    """(replicas, peak minute start): the smallest fixed fleet that meets the SLO over the
    minute of highest prefill + decode need, replayed with the minute before it."""
    minutes = int(w.arrival[-1] // 60) + 1
    peak = max(range(minutes), key=lambda m: _need(w, cap, m * 60, m * 60 + 60)) * 60
    lo_i = next(i for i in range(len(w)) if w.arrival[i] >= max(0, peak - 60))
    hi_i = next((i for i in range(len(w)) if w.arrival[i] >= peak + 60), len(w))
    base = w.arrival[lo_i]
    part = Workload([a - base for a in w.arrival[lo_i:hi_i]], w.prompt[lo_i:hi_i],
                    w.output[lo_i:hi_i])
    first = next(i for i in range(len(part)) if part.arrival[i] + base >= peak)
    idx = range(first, len(part))
    n = max(1, math.floor(_need(w, cap, peak, peak + 60)))
    while n < MAX_REPLICA and not _meets(fp, part, n, idx):
        n += 1
    return n, float(peak)


# -- policies --------------------------------------------------------------------------------


def policies(static_n: int, conc_target: int, cap: Capacity, fp: FleetParams, initial: int
             ) -> list[Policy]:
    common = {"min_replica": 0, "max_replica": MAX_REPLICA, "concurrency_target": conc_target,
              "target_utilization_percentage": 70}
    kpa = Settings(**common, autoscaling_window_s=60.0, scale_down_delay_s=0.0,  # type: ignore[arg-type]
                   panic_window_s=6.0, panic_threshold=2.0, cold_start_lead=False)
    baseten = Settings(**common, autoscaling_window_s=60.0, scale_down_delay_s=900.0,  # type: ignore[arg-type]
                       panic_window_s=0.0, cold_start_lead=False)
    sla = Settings(**common, autoscaling_window_s=60.0, scale_down_delay_s=SLA_SCALE_DOWN_DELAY_S,  # type: ignore[arg-type]
                   mode=Mode.SLA, ttft_p90_target_ms=fp.ttft_slo_ms,
                   itl_p90_target_ms=fp.itl_slo_ms, panic_window_s=6.0, cold_start_lead=True)
    return [Policy("static-peak", static=static_n),
            Policy("kpa", kpa, initial=initial),
            Policy("baseten", baseten, initial=initial),
            Policy("basalt-sla", sla, capacity=cap, initial=initial)]


def _p90(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, math.ceil(0.9 * len(xs)) - 1)] if xs else 0.0


def summarize(w: Workload, r: Result, fp: FleetParams, static_cost: float) -> dict[str, object]:
    ttft, itl = attainment(w, r, fp)
    o = r.outcome
    ttfts = [(o.first[i] - w.arrival[i]) * 1000 for i in range(len(w)) if o.first[i] >= 0]
    return {"policy": r.policy, "ttft_attainment": ttft, "itl_attainment": itl,
            "ttft_p90_ms": _p90(ttfts), "replica_seconds": r.replica_seconds,
            "vs_static": r.replica_seconds / static_cost if static_cost else 0.0,
            "scale_events": r.scale_events, "cold_start_hits": sum(o.cold),
            "parked": sum(o.parked), "rejected": sum(o.rejected),
            "max_replicas": r.max_replicas}


def run_trace(path: Path, fp: FleetParams, minutes: float | None, time_scale: float,
              load_scale: int) -> dict[str, object]:
    w = load_trace(path, minutes, time_scale, load_scale)
    prof = profile(fp, w)
    cap = Capacity(prof["prefill_tokens_per_s"], prof["decode_tokens_per_s"])
    conc = max(1, round(prof["concurrency"]))
    static_n, peak = static_peak(fp, w, cap)
    initial = max(1, math.ceil(_need(w, cap, 0.0, 60.0)))
    rows = []
    static_cost = 0.0
    for pol in policies(static_n, conc, cap, fp, initial):
        r = simulate(w, fp, pol)
        if pol.settings is None:
            static_cost = r.replica_seconds
        rows.append(summarize(w, r, fp, static_cost))
    ceiling = sum(attainable(w, fp)) / len(w)
    return {"trace": path.name, "requests": len(w), "duration_s": w.arrival[-1],
            "time_scale": time_scale, "load_scale": load_scale, "profile": prof,
            "concurrency_target": conc, "static_peak": static_n, "peak_minute_s": peak,
            "initial_replicas": initial, "ttft_ceiling": ceiling, "policies": rows}


# -- output ----------------------------------------------------------------------------------

HEADER = ("| policy | TTFT SLO met | ITL SLO met | TTFT p90 (ms) | replica-s | vs static-peak "
          "| scale events | met a cold start | parked | rejected | max replicas |\n"
          "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")


def verdict(t: dict) -> str:
    by = {p["policy"]: p for p in t["policies"]}
    s, k = by["basalt-sla"], by["kpa"]
    a1 = s["ttft_attainment"] >= 0.99 and s["vs_static"] <= 0.60
    a2 = (s["replica_seconds"] <= 0.70 * k["replica_seconds"]
          and s["ttft_attainment"] >= k["ttft_attainment"])
    return (f"Verdict: basalt-sla {s['ttft_attainment']:.2%} TTFT-SLO at {s['vs_static']:.0%} "
            f"of static-peak (aim >= 99% at <= 60%: {'met' if a1 else 'missed'}); "
            f"{1 - s['replica_seconds'] / k['replica_seconds']:.0%} fewer replica-s than kpa "
            f"at {s['ttft_attainment'] - k['ttft_attainment']:+.2%} attainment "
            f"(aim >= 30% fewer at equal or better: {'met' if a2 else 'missed'}).")


def format_trace(t: dict) -> str:
    pr = t["profile"]
    lines = [
        f"### {t['trace']}", "",
        (f"{t['requests']:,} requests over {t['duration_s']:,.0f} s (arrivals ÷{t['time_scale']:g}, "
        f"each request ×{t['load_scale']}). Profiled per replica: prefill "
        f"{pr['prefill_tokens_per_s']:,.0f} prompt tok/s, decode {pr['decode_tokens_per_s']:,.0f} "
        f"tok/s, concurrency target {t['concurrency_target']} (mixed load at "
        f"{pr['mixed_rate_per_s']:.2f} req/s). static-peak = {t['static_peak']} replicas (peak "
        f"minute at {t['peak_minute_s']:,.0f} s); autoscalers start with "
        f"{t['initial_replicas']} ready. TTFT ceiling (share whose prompt alone on an idle "
        f"replica meets the TTFT SLO): {t['ttft_ceiling']:.2%}."), "", HEADER,
    ]
    for p in t["policies"]:
        lines.append(
            f"| {p['policy']} | {p['ttft_attainment']:.2%} | {p['itl_attainment']:.2%} | "
            f"{p['ttft_p90_ms']:,.0f} | {p['replica_seconds']:,.0f} | {p['vs_static']:.2f} | "
            f"{p['scale_events']} | {p['cold_start_hits']} | {p['parked']} | {p['rejected']} | "
            f"{p['max_replicas']} |")
    return "\n".join([*lines, "", verdict(t)])


def assumptions(fp: FleetParams) -> str:
    return (
        "Virtual time (`bench/autoscale_sim.py`), 1 s ticks: continuous-batching replicas on "
        f"the sim's `{fp.profile.name}` timing profile ({fp.max_num_seqs} seqs, "
        f"{fp.max_num_batched_tokens} batched tokens a step, {fp.kv_tokens:,} KV tokens "
        f"reserved per request up front, max_model_len {fp.max_model_len:,}: longer requests "
        "are rejected), routed to the ready replica with the fewest outstanding requests; "
        "with none ready a request parks until one is. "
        f"Cold start {fp.cold_start_s:g} s (a GPU replica whose weights are cached on the node; "
        "this repo's tiny model on vLLM CPU measured ~50 s, not a GPU figure). "
        f"SLOs: TTFT <= {fp.ttft_slo_ms:g} ms (park and queue included), mean ITL <= "
        f"{fp.itl_slo_ms:g} ms. A replica costs from launch to stop (cold start and drain "
        "included). Profiling (Dynamo's way, on the replica model, per trace mix): prefill "
        f"capacity = the largest prompt-only Poisson load one replica serves with {PROFILE_ATTAIN:.0%} "
        "TTFT-SLO attainment (p90, as the core's targets; of requests that can meet it at all); decode capacity = the "
        "largest decode batch whose step meets the ITL SLO; concurrency target = the "
        "concurrency of the largest mixed load one replica serves within both SLOs, used by "
        "kpa, baseten and basalt-sla's fallback. static-peak = the smallest fixed fleet with "
        f"{ATTAIN:.0%} attainment (of the attainable) in the peak-need minute. kpa: 60 s stable / 6 s panic "
        "window, panic at 200%, scale-down delay 0, 70% target, min 0. baseten: 60 s window, "
        "900 s scale-down delay, 70%, no panic, no cold-start lead, min 0. basalt-sla: SLA "
        f"mode, the profiled capacity prior, panic 6 s, cold-start lead, "
        f"{SLA_SCALE_DOWN_DELAY_S:g} s scale-down delay, min 0. max_replica {MAX_REPLICA} "
        "for all. *met a cold start* = parked while a replica was starting.")


def format_report(traces: list[dict], fp: FleetParams, command: str, wall_s: float) -> str:
    parts = [assumptions(fp), ""]
    for t in traces:
        parts += [format_trace(t), ""]
    parts += [f"Command: `{command}`", "",
              f"Machine: {machine_line()}; wall {wall_s:.0f} s (simulation cost, not serving)."]
    return "\n".join(parts)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="basalt bench autoscale", description=__doc__)
    p.add_argument("--trace", type=Path, action="append", required=True,
                   help="Azure .csv or Mooncake .jsonl (repeatable)")
    p.add_argument("--minutes", type=float, default=None, help="replay the first N minutes")
    p.add_argument("--ttft-slo-ms", type=float, default=_DEFAULTS.ttft_slo_ms)
    p.add_argument("--itl-slo-ms", type=float, default=_DEFAULTS.itl_slo_ms)
    p.add_argument("--cold-start-s", type=float, default=_DEFAULTS.cold_start_s)
    p.add_argument("--time-scale", type=float, action="append", default=None,
                   help="divide arrival times by this; once for all traces or once per trace")
    p.add_argument("--load-scale", type=int, action="append", default=None,
                   help="replay each request N times (copy j j/N s later); once or per trace")
    p.add_argument("--json", type=Path, default=None)
    p.add_argument("--markdown", type=Path, default=None,
                   help=f"replace or add the '{SECTION}' section of this file")
    return p


def _per_trace(values: list | None, n: int, name: str, default: float) -> list:
    if not values:
        return [default] * n
    if len(values) == 1:
        return values * n
    if len(values) != n:
        raise TraceError(f"{name}: give it once or once per --trace ({n})")
    return values


def main(argv: list[str]) -> int:
    ns = build_parser().parse_args(argv)
    try:
        if min(ns.ttft_slo_ms, ns.itl_slo_ms) <= 0 or ns.cold_start_s < 0:
            raise TraceError("SLOs must be > 0 and --cold-start-s >= 0")
        scales = _per_trace(ns.time_scale, len(ns.trace), "--time-scale", 1.0)
        loads = _per_trace(ns.load_scale, len(ns.trace), "--load-scale", 1)
        if min(scales) <= 0 or min(loads) < 1:
            raise TraceError("--time-scale must be > 0 and --load-scale >= 1")
        fp = replace(FleetParams(), cold_start_s=ns.cold_start_s, ttft_slo_ms=ns.ttft_slo_ms,
                     itl_slo_ms=ns.itl_slo_ms)
        started = time.perf_counter()
        traces = [run_trace(path, fp, ns.minutes, s, k)
                  for path, s, k in zip(ns.trace, scales, loads, strict=True)]
    except (OSError, TraceError) as e:
        print(f"basalt bench autoscale: {e}", file=sys.stderr)
        return 2
    command = ("basalt bench autoscale " + shlex.join(argv)).strip()
    text = format_report(traces, fp, command, time.perf_counter() - started)
    print(text)
    if ns.json is not None:
        ns.json.write_text(json.dumps({"command": command, "machine": machine_line(),
                                       "traces": traces}, indent=2) + "\n")
    if ns.markdown is not None:
        update_section(ns.markdown, SECTION, text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
