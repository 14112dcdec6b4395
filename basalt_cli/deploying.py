"""`basalt deploy FILE [--wait]`: make the control plane's deployments and environments match a
file, then optionally wait until they serve it (does I/O: the deployments API via the SDK)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

from basalt import deployfile
from basalt.client import BasaltError, Client, Deployment
from basalt_cli.views import applied_text, progress

Out = Callable[[str], None]


class DeployStopped(Exception):
    """Waiting is pointless (a deployment failed or cannot be placed) or took too long."""


def apply(client: Client, parsed: deployfile.DeployFile, out: Out = print) -> None:
    """PUT each deployment (created, unchanged, or changed, as the answer says), then point
    each environment at its deployment. A server without PUT (405) gets today's create, or
    on 409 a scale."""
    for dep in parsed.deployments:
        try:
            out(applied_text(client.apply_deployment(dep.model, dep)))
        except BasaltError as e:
            if e.status != 405:
                raise
            _create_or_scale(client, dep, out)
    for env in parsed.environments:
        try:
            current = {e.name: e for e in client.environments(env.model)}
        except BasaltError as e:
            if e.status != 404:
                raise
            current = {}
        now = current.get(env.name)
        if now is not None and now.deployment_id == env.deployment_id:
            out(f"{env.model}@{env.name} -> {env.deployment_id} (unchanged)")
            continue
        if now is None:
            client.create_environment(env.model, env.name, env.deployment_id)
        else:
            client.promote(env.model, env.deployment_id, env.name)
        out(f"{env.model}@{env.name} -> {env.deployment_id}")


def _create_or_scale(client: Client, dep: deployfile.Deployment, out: Out) -> None:
    try:
        client.create_deployment(dep.model, dep)
        out(f"{dep.id}: created ({dep.engine}, {dep.replicas} replica(s))")
    except BasaltError as e:
        if e.status != 409:
            raise
        client.scale(dep.model, dep.id, dep.replicas)
        out(f"{dep.id}: exists; replicas set to {dep.replicas} (this control plane has no "
            "PUT: other changed fields were not applied)")


def wait(client: Client, targets: list[tuple[str, str]], timeout: float,
         poll_s: float = 1.0, clock: Callable[[], float] = time.monotonic) -> list[Deployment]:
    """Poll each (model, deployment id) until all are done (`views.progress`), with one
    progress line; DeployStopped at once on a failed or unplaced deployment, or at `timeout`."""
    t0 = clock()
    tty, last = sys.stdout.isatty(), ""
    while True:
        deps = [client.deployment(m, d) for m, d in targets]
        states = [progress(d) for d in deps]
        if stopped := [s.stopped for s in states if s.stopped]:
            _end_line(tty)
            raise DeployStopped("; ".join(stopped))
        line = "; ".join(f"{d.id} {s.words}" for d, s in zip(deps, states, strict=True))
        if all(s.done for s in states):
            _end_line(tty)
            print(f"ready after {clock() - t0:.0f}s: {line}", flush=True)
            return deps
        if clock() - t0 > timeout:
            _end_line(tty)
            raise DeployStopped(f"not ready after {timeout:.0f}s: {line}")
        if tty:
            print(f"\r\033[Kwaiting ({clock() - t0:.0f}s): {line}", end="", flush=True)
        elif line != last:  # a log, not a terminal: a line per change
            print(f"waiting: {line}", flush=True)
        last = line
        time.sleep(poll_s)


def _end_line(tty: bool) -> None:
    if tty:
        print("\r\033[K", end="", flush=True)
