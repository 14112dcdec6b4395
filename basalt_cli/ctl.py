"""The daily CLI against the control plane's API: deploy, status, scale, wake, promote, logs
(does I/O)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import httpx

from basalt import deployfile
from services.runtime.core.phases import StartPhases

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".basalt"
# The management key `basalt up` minted (the deployments API takes management keys only).
KEY_FILE = STATE / "management-key"


class CtlError(Exception):
    pass


def _client(url: str, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def _check(r: httpx.Response) -> dict[str, Any]:
    if r.status_code >= 400:
        try:
            msg = r.json()["error"]["message"]
        except (ValueError, KeyError, TypeError):  # not JSON, or not our error shape
            msg = r.text
        raise CtlError(f"{r.request.method} {r.request.url.path}: {r.status_code} {msg}")
    return r.json()


def apply(url: str, key: str | None, parsed: deployfile.DeployFile) -> None:
    """Create each deployment (or set its replicas if it exists), then its environments."""
    with _client(url, key) as c:
        for dep in parsed.deployments:
            body = dep.model_dump(exclude={"model"})
            r = c.post(f"/v1/models/{dep.model}/deployments", json=body)
            if r.status_code == 409:
                _check(c.post(f"/v1/models/{dep.model}/deployments/{dep.id}/scale",
                              json={"replicas": dep.replicas}))
                print(f"{dep.id}: exists; replicas set to {dep.replicas}")
            else:
                _check(r)
                print(f"{dep.id}: created ({dep.engine}, {dep.replicas} replica(s))")
        for env in parsed.environments:
            r = c.post(f"/v1/models/{env.model}/environments",
                       json={"name": env.name, "deployment_id": env.deployment_id})
            if r.status_code == 409:
                _check(c.post(f"/v1/models/{env.model}/environments/{env.name}/promote",
                              json={"deployment_id": env.deployment_id}))
            else:
                _check(r)
            print(f"{env.model}@{env.name} -> {env.deployment_id}")


def _models(c: httpx.Client) -> list[dict[str, Any]]:
    """Every model with its deployments (one request: the list carries them)."""
    return list(_check(c.get("/v1/models")).get("models", []))


def _find_model(c: httpx.Client, deployment_id: str) -> str:
    for model in _models(c):
        if any(d["id"] == deployment_id for d in model["deployments"]):
            return str(model["name"])
    raise CtlError(f"no deployment {deployment_id!r}")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(str(x)) for x in col) for col in zip(header, *rows)]

    def line(r: list[str]) -> str:
        return "  ".join(str(x).ljust(w) for x, w in zip(r, widths))

    return "\n".join([line(header), *(line(r) for r in rows)])


def replica_phases(r: dict[str, Any]) -> StartPhases:
    """A replica view's start phases (its `start`, as MessageToDict writes a StartPhases);
    a view without them falls back to its `started_ts` / `ready_ts` where present."""
    phases = StartPhases.from_dict(r.get("start") or {},
                                   str(r.get("weights_revision") or r.get("weightsRevision") or ""))
    if not phases.started_ts and not phases.ready_ts:
        fallback = StartPhases.from_dict({"launched_ts": r.get("started_ts", 0),
                                          "ready_ts": r.get("ready_ts", 0)})
        phases.launched_ts, phases.ready_ts = fallback.launched_ts, fallback.ready_ts
    return phases


def _seconds(s: float | None) -> str:
    return "-" if s is None else f"{s:.1f}s"


def cold_start(replicas: list[dict[str, Any]]) -> str:
    """The newest ready replica's cold start (placement, else launch, to READY), or `-`."""
    ready = [p for r in replicas if r.get("state") == "ready"
             if (p := replica_phases(r)).cold_start_s() is not None]
    return _seconds(max(ready, key=lambda p: p.ready_ts).cold_start_s()) if ready else "-"


def status(url: str, key: str | None, verbose: bool = False) -> str:
    """The deployments table, then the replicas table; `verbose` adds each replica's start
    phases, one line each."""
    deps, reps, starts = [], [], []
    with _client(url, key) as c:
        for model in _models(c):
            for d in model["deployments"]:
                auto = d.get("autoscaler") or {}
                scaling = ("fixed" if d.get("autoscaling_settings") is None
                           else auto.get("reason") or "autoscaled")
                replicas: list[dict[str, Any]] = []
                if d["replica_count"]:
                    path = f"/v1/models/{model['name']}/deployments/{d['id']}"
                    replicas = list(_check(c.get(path)).get("replicas", []))
                deps.append([d["id"], d["model"], d["spec"].get("engine", ""), d["status"],
                             str(d["desired_replicas"]), str(d["active_replica_count"]),
                             ",".join(d["environments"]) or "-", scaling, cold_start(replicas)])
                for r in replicas:
                    phases = replica_phases(r)
                    reps.append([r.get("id", ""), d["id"], r.get("state", ""),
                                 r.get("region", ""), r.get("zone", ""), r.get("cluster", ""),
                                 r.get("grpc_address", ""), _seconds(phases.cold_start_s())])
                    starts.append(f"{r.get('id', '')}: {phases.summary()}")
    out = _table(deps, ["DEPLOYMENT", "MODEL", "ENGINE", "STATUS", "DESIRED", "READY",
                        "ENVIRONMENTS", "SCALING", "COLD START"])
    if reps:
        out += "\n\n" + _table(reps, ["REPLICA", "DEPLOYMENT", "STATE", "REGION", "ZONE",
                                      "CLUSTER", "ADDRESS", "COLD START"])
    if verbose and starts:
        out += "\n\nSTART PHASES\n" + "\n".join(starts)
    return out


def scale(url: str, key: str | None, deployment_id: str, replicas: int) -> None:
    with _client(url, key) as c:
        model = _find_model(c, deployment_id)
        _check(c.post(f"/v1/models/{model}/deployments/{deployment_id}/scale",
                      json={"replicas": replicas}))


def wake(url: str, key: str | None, deployment_id: str) -> dict[str, Any]:
    """Wake a deployment (at zero: scaled to at least one replica now)."""
    with _client(url, key) as c:
        model = _find_model(c, deployment_id)
        return _check(c.post(f"/v1/models/{model}/deployments/{deployment_id}/wake"))


def promote(url: str, key: str | None, deployment_id: str, environment: str,
            timeout: float = 600.0) -> None:
    """Bring the deployment up, wait for a READY replica (with progress), then switch the
    environment to it; the old deployment scales down and drains its in-flight requests."""
    with _client(url, key) as c:
        model = _find_model(c, deployment_id)
        base = f"/v1/models/{model}/deployments/{deployment_id}"
        _check(c.post(base + "/activate"))
        t0 = time.monotonic()
        while (dep := _check(c.get(base)))["active_replica_count"] < 1:
            if time.monotonic() - t0 > timeout:
                raise CtlError(f"{deployment_id} has no ready replica after {timeout:.0f}s")
            print(f"\r\033[Kwaiting for {deployment_id}: {dep['replica_count']} replica(s), "
                  f"none ready ({time.monotonic() - t0:.0f}s)", end="", flush=True)
            time.sleep(1.0)
        print()
        env_path = f"/v1/models/{model}/environments/{environment}"
        r = c.post(env_path + "/promote", json={"deployment_id": deployment_id})
        if r.status_code == 404 and environment == "production":
            r = c.post(base + "/promote")
        _check(r)


def log_path(name: str, state: Path = STATE) -> Path:
    """A service's log (nats, mcm, router, autoscaler, coldstart) or a replica's (by replica id). `state` is the
    stack's folder (`basalt up --state-dir`) or a control plane's own `--state-dir`."""
    folders = (state / "logs", state / "mcm", state)
    for folder in folders:
        if (folder / f"{name}.log").exists():
            return folder / f"{name}.log"
    known = sorted({p.stem for folder in folders for p in folder.glob("*.log")})
    raise CtlError(f"no log for {name!r}; known: {', '.join(known) or 'none (is basalt up running?)'}")


def logs(name: str, follow: bool, lines: int, state: Path = STATE) -> None:
    path = log_path(name, state)
    with open(path, errors="replace") as f:
        for line in f.readlines()[-lines:]:
            sys.stdout.write(line)
        while follow:
            line = f.readline()
            if line:
                sys.stdout.write(line)
                sys.stdout.flush()
            else:
                time.sleep(0.3)


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mcm-url", default=os.environ.get("BASALT_MCM_URL", "http://127.0.0.1:8081"),
                   help="the deployments API (env BASALT_MCM_URL)")
    p.add_argument("--api-key", default=os.environ.get("BASALT_API_KEY"),
                   help=f"management API key (env BASALT_API_KEY; default: the one `basalt up` wrote to {KEY_FILE})")


def _key(ns: argparse.Namespace) -> str | None:
    if ns.api_key:
        return str(ns.api_key)
    return KEY_FILE.read_text().strip() if KEY_FILE.exists() else None


def main(cmd: str, argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog=f"basalt {cmd}")
    if cmd == "deploy":
        p.add_argument("file", type=Path, help="a deployment file (see deploy/local/tiny.yaml)")
    elif cmd == "scale":
        p.add_argument("deployment")
        p.add_argument("replicas", type=int)
    elif cmd == "promote":
        p.add_argument("deployment")
        p.add_argument("--environment", default="production")
    elif cmd == "wake":
        p.add_argument("deployment")
    elif cmd == "status":
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also each replica's start phases (fetch, load, engine init, ...)")
    elif cmd == "logs":
        p.add_argument("service", help="nats, mcm, router, or a replica id")
        p.add_argument("-f", "--follow", action="store_true")
        p.add_argument("-n", "--lines", type=int, default=50)
        p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("BASALT_STATE_DIR", STATE)),
                       help="the stack's folder, or a control plane's --state-dir (env BASALT_STATE_DIR)")
    if cmd != "logs":
        _common(p)
    ns = p.parse_args(argv)
    try:
        if cmd == "deploy":
            apply(ns.mcm_url, _key(ns), deployfile.load(ns.file, base_dir=ns.file.parent))
        elif cmd == "status":
            print(status(ns.mcm_url, _key(ns), ns.verbose))
        elif cmd == "scale":
            scale(ns.mcm_url, _key(ns), ns.deployment, ns.replicas)
            print(f"{ns.deployment}: desired replicas {ns.replicas}")
        elif cmd == "wake":
            d = wake(ns.mcm_url, _key(ns), ns.deployment)
            print(f"{ns.deployment}: woken; desired replicas {d['desired_replicas']}, "
                  f"ready {d['active_replica_count']}")
        elif cmd == "promote":
            promote(ns.mcm_url, _key(ns), ns.deployment, ns.environment)
            print(f"{ns.environment} -> {ns.deployment}")
        elif cmd == "logs":
            logs(ns.service, ns.follow, ns.lines, ns.state_dir)
    except (CtlError, httpx.HTTPError) as e:
        print(f"basalt {cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
    return 0
