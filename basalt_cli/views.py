"""What the CLI prints about deployments: tables, health, start phases, rollout progress (no
I/O: it formats what the SDK returned)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from basalt.client import Applied, Deployment, Model
from services.runtime.core.phases import StartPhases

# Health states after which waiting is pointless until someone acts.
STOPPED_STATES = ("failed", "unplaced")


def table(rows: Sequence[Sequence[str]], header: Sequence[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows, strict=False)]

    def line(r: Sequence[str]) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(r, widths, strict=False)).rstrip()

    return "\n".join([line(header), *(line(r) for r in rows)])


def replica_phases(r: Mapping[str, Any]) -> StartPhases:
    """A replica view's start phases (its `start`, as MessageToDict writes a StartPhases);
    a view without them falls back to its `started_ts` / `ready_ts` where present."""
    phases = StartPhases.from_dict(r.get("start") or {},
                                   str(r.get("weights_revision") or r.get("weightsRevision") or ""))
    if not phases.started_ts and not phases.ready_ts:
        fallback = StartPhases.from_dict({"launched_ts": r.get("started_ts", 0),
                                          "ready_ts": r.get("ready_ts", 0)})
        phases.launched_ts, phases.ready_ts = fallback.launched_ts, fallback.ready_ts
    return phases


def seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}s"


def cold_start(replicas: Sequence[Mapping[str, Any]]) -> str:
    """The newest ready replica's cold start (placement, else launch, to READY), or `-`."""
    ready = [p for r in replicas if r.get("state") == "ready"
             if (p := replica_phases(r)).cold_start_s() is not None]
    return seconds(max(ready, key=lambda p: p.ready_ts).cold_start_s()) if ready else "-"


def health_text(dep: Deployment) -> str:
    """`ok`, `FAILED: <reason>`, `UNPLACED: <reason>`, `rolling: <reason>`, ...; `-` from a
    server that reports no health."""
    h = dep.health
    if not h.state:
        return "-"
    state = h.state.upper() if h.state in STOPPED_STATES else h.state
    return f"{state}: {h.reason}" if h.reason else state


def status_text(models: Sequence[Model], details: Mapping[str, Deployment],
                services: Mapping[str, str], verbose: bool = False) -> str:
    """The deployments table, the replicas table, the local services' metrics ports;
    `details` holds the one-deployment views (with replicas) by id; `verbose` adds each
    replica's start phases."""
    deps, reps, starts = [], [], []
    for model in models:
        for listed in model.deployments:
            d = details.get(listed.id, listed)
            scaling = ("fixed" if d.autoscaling_settings is None
                       else (d.autoscaler or {}).get("reason") or "autoscaled")
            raw = [r.raw for r in d.replicas]
            deps.append([d.id, d.model, str(d.spec.get("engine", "")), d.status,
                         str(d.desired_replicas), str(d.active_replica_count),
                         ",".join(d.environments) or "-", scaling, cold_start(raw),
                         health_text(d)])
            for r in d.replicas:
                phases = replica_phases(r.raw)
                reps.append([r.id, d.id, r.state, r.region or "-", r.zone or "-",
                             r.cluster or "-", r.grpc_address or "-",
                             seconds(phases.cold_start_s()), r.metrics_address or "-"])
                starts.append(f"{r.id}: {phases.summary()}")
    out = table(deps, ["DEPLOYMENT", "MODEL", "ENGINE", "STATUS", "DESIRED", "READY",
                       "ENVIRONMENTS", "SCALING", "COLD START", "HEALTH"])
    if reps:
        out += "\n\n" + table(reps, ["REPLICA", "DEPLOYMENT", "STATE", "REGION", "ZONE",
                                     "CLUSTER", "ADDRESS", "COLD START", "METRICS"])
    if services:
        out += "\n\n" + table(sorted(services.items()), ["SERVICE", "METRICS"])
    if verbose and starts:
        out += "\n\nSTART PHASES\n" + "\n".join(starts)
    return out


def applied_text(a: Applied) -> str:
    """One line on what PUT did to a deployment."""
    d = a.deployment
    if a.created:
        return f"{d.id}: created ({d.spec.get('engine', '')}, {d.desired_replicas} replica(s))"
    if not a.changes:
        return f"{d.id}: unchanged"
    fields = ", ".join(f"{c.field} ({_short(c.old)} -> {_short(c.new)})" for c in a.changes)
    how = ("replicas will be replaced one at a time (each new one READY before an old one "
           "stops)" if a.rollout else "no replica restarts")
    return f"{d.id}: changed {fields}; {how}"


def _short(v: Any) -> str:
    text = str(v)
    return text if len(text) <= 40 else text[:37] + "..."


@dataclass(frozen=True, slots=True)
class Progress:
    """Where one deployment stands on the way to its file: `done`, or `stopped` (a reason
    nothing will fix by waiting), and a few words for the progress line."""

    done: bool
    stopped: str | None
    words: str


def progress(d: Deployment) -> Progress:
    """Done when enough replicas are ready, health is ok (scaled_to_zero for 0 desired) and
    every replica runs the deployment's spec revision; stopped on failed / unplaced."""
    h = d.health
    if h.state in STOPPED_STATES:
        return Progress(False, f"{d.id}: {health_text(d)}", h.state)
    want = "scaled_to_zero" if d.desired_replicas == 0 else "ok"
    healthy = h.state in ("", want)  # "": a server that reports no health
    stale = [r for r in d.replicas if d.spec_revision and r.spec_revision != d.spec_revision]
    done = d.active_replica_count >= d.desired_replicas and healthy and not stale
    words = f"{d.active_replica_count}/{d.desired_replicas} ready"
    if stale:
        words += f", {len(stale)} on an old revision"
    if h.state and not healthy:
        words += f", {h.state}"
    return Progress(done, None, words)
