"""The daily CLI against the control plane's API, on the SDK (`basalt.client`): deploy, status,
scale, wake, promote, activate, deactivate, delete, logs (does I/O)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from basalt import deployfile
from basalt.client import BasaltError, Client, Deployment, Model
from basalt_cli import stack
from basalt_cli.deploying import DeployStopped, apply, wait
from basalt_cli.views import cold_start, replica_phases, status_text

__all__ = ["CtlError", "apply", "cold_start", "main", "replica_phases", "status"]

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / ".basalt"
# What `basalt wake|activate|deactivate DEP` says it did.
DONE = {"wake": "woken", "activate": "activated",
        "deactivate": "deactivated (it serves nothing until activated)"}


class CtlError(Exception):
    """A request the CLI refuses itself, with the way out in its message."""


def status(client: Client, verbose: bool = False, state: Path = STATE) -> str:
    """The deployments table (with health), the replicas table, the local services' metrics."""
    models = client.models()
    details = {d.id: client.deployment(m.name, d.id)
               for m in models for d in m.deployments if d.replica_count}
    return status_text(models, details, stack.metrics_ports(state), verbose)


def promote(client: Client, deployment_id: str, environment: str, timeout: float = 600.0) -> None:
    """Bring the deployment up, wait for a READY replica (with progress), then switch the
    environment to it; the old deployment scales down and drains its in-flight requests."""
    dep = client.find_deployment(deployment_id)
    client.activate(dep.model, deployment_id)
    t0 = time.monotonic()
    while (dep := client.deployment(dep.model, deployment_id)).active_replica_count < 1:
        if dep.health.state in ("failed", "unplaced"):
            raise CtlError(f"{deployment_id}: {dep.health.state.upper()}: {dep.health.reason}")
        if time.monotonic() - t0 > timeout:
            raise CtlError(f"{deployment_id} has no ready replica after {timeout:.0f}s")
        print(f"\r\033[Kwaiting for {deployment_id}: {dep.replica_count} replica(s), "
              f"none ready ({time.monotonic() - t0:.0f}s)", end="", flush=True)
        time.sleep(1.0)
    print()
    client.promote(dep.model, deployment_id, environment)


def delete(client: Client, target: str) -> str:
    """A model name deletes the model and all its deployments; else a deployment id deletes
    that deployment (refused, with the way out, while an environment serves it)."""
    models = {m.name: m for m in client.models()}
    if target in models:
        got = client.delete_model(target)
        return (f"deleted model {target}: deployments {', '.join(got['deployments']) or '-'}; "
                f"environments {', '.join(got['environments']) or '-'}")
    dep = _find(models.values(), target)
    if dep.environments:
        others = [d.id for d in models[dep.model].deployments if d.id != dep.id]
        fix = (f"promote another deployment into it first (`basalt promote {others[0]} "
               f"--environment {dep.environments[0]}`), or " if others else "")
        raise CtlError(f"{target} is what environment(s) {', '.join(dep.environments)} of model "
                       f"{dep.model} serve: {fix}delete the whole model (`basalt delete "
                       f"{dep.model}`)")
    client.delete_deployment(dep.model, dep.id)
    return f"deleted deployment {dep.id} (model {dep.model})"


def _find(models: Iterable[Model], deployment_id: str) -> Deployment:
    for m in models:
        for d in m.deployments:
            if d.id == deployment_id:
                return d
    raise CtlError(f"no model or deployment {deployment_id!r}")


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


def state_dir_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state-dir", type=Path, default=Path(os.environ.get("BASALT_STATE_DIR", STATE)),
                   help="the stack's folder, or a control plane's --state-dir (env BASALT_STATE_DIR)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--mcm-url", default=os.environ.get("BASALT_MCM_URL"),
                   help="the deployments API (env BASALT_MCM_URL; default: the stack `basalt up` "
                        "runs on --state-dir, else http://127.0.0.1:8081)")
    p.add_argument("--api-key", default=os.environ.get("BASALT_API_KEY"),
                   help="management API key (env BASALT_API_KEY; default: the one `basalt up` "
                        "wrote to <state-dir>/management-key)")


def _url(ns: argparse.Namespace) -> str:
    if ns.mcm_url:
        return str(ns.mcm_url)
    info = stack.read_pid_file(ns.state_dir)
    port = info.ports.get("mcm") if info is not None else None
    return f"http://127.0.0.1:{port or 8081}"


def _key(ns: argparse.Namespace) -> str | None:
    if ns.api_key:
        return str(ns.api_key)
    key_file = ns.state_dir / "management-key"
    return key_file.read_text().strip() if key_file.exists() else None


def _parser(cmd: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"basalt {cmd}")
    if cmd == "deploy":
        p.add_argument("file", type=Path, help="a deployment file (see deploy/local/tiny.yaml)")
        p.add_argument("--wait", action="store_true",
                       help="then wait until every deployment in the file serves its spec: "
                            "enough replicas READY, health ok, none on an old revision")
        p.add_argument("--timeout", type=float, default=600.0, help="--wait's limit, seconds")
    elif cmd == "scale":
        p.add_argument("deployment")
        p.add_argument("replicas", type=int)
    elif cmd == "promote":
        p.add_argument("deployment")
        p.add_argument("--environment", default="production")
    elif cmd in ("wake", "activate", "deactivate"):
        p.add_argument("deployment")
    elif cmd == "delete":
        p.add_argument("target", metavar="MODEL|DEPLOYMENT",
                       help="a model (deletes it and all its deployments) or a deployment id")
    elif cmd == "status":
        p.add_argument("-v", "--verbose", action="store_true",
                       help="also each replica's start phases (fetch, load, engine init, ...)")
    elif cmd == "logs":
        p.add_argument("service", help="nats, mcm, router, or a replica id")
        p.add_argument("-f", "--follow", action="store_true")
        p.add_argument("-n", "--lines", type=int, default=50)
    state_dir_arg(p)
    if cmd != "logs":
        _common(p)
    return p


def _run(cmd: str, ns: argparse.Namespace, c: Client) -> int:
    if cmd == "deploy":
        parsed = deployfile.load(ns.file, base_dir=ns.file.parent)
        apply(c, parsed)
        if ns.wait:
            wait(c, [(d.model, d.id) for d in parsed.deployments], ns.timeout)
    elif cmd == "status":
        print(status(c, ns.verbose, ns.state_dir))
    elif cmd == "scale":
        dep = c.find_deployment(ns.deployment)
        c.scale(dep.model, dep.id, ns.replicas)
        print(f"{ns.deployment}: desired replicas {ns.replicas}")
    elif cmd in ("wake", "activate", "deactivate"):
        dep = c.find_deployment(ns.deployment)
        d = getattr(c, cmd)(dep.model, dep.id)
        print(f"{ns.deployment}: {DONE[cmd]}; status {d.status}, desired replicas "
              f"{d.desired_replicas}, ready {d.active_replica_count}")
    elif cmd == "promote":
        promote(c, ns.deployment, ns.environment)
        print(f"{ns.environment} -> {ns.deployment}")
    elif cmd == "delete":
        print(delete(c, ns.target))
    return 0


def main(cmd: str, argv: list[str]) -> int:
    ns = _parser(cmd).parse_args(argv)
    try:
        if cmd == "logs":
            logs(ns.service, ns.follow, ns.lines, ns.state_dir)
            return 0
        with Client(_url(ns), _key(ns)) as c:
            return _run(cmd, ns, c)
    except (CtlError, BasaltError, DeployStopped, OSError, ValueError) as e:
        # ValueError: a deployment file that does not parse (pydantic's ValidationError)
        print(f"basalt {cmd}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 0
