"""Start the control plane (mcm) as a subprocess, and find the replicas it runs, for
integration tests (does I/O)."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from basalt.deployfile import Deployment
from basalt.pb import deploy_pb2, events_pb2
from basalt_tools.natsserver import free_port
from tests.service_process import ServiceProcess

T = TypeVar("T")

# A sim-engine replica that starts in about two seconds and heartbeats often.
FAST_SIM_ARGS = {"heartbeat_interval": "0.5", "drain_timeout": "1", "sim_num_blocks": "256"}


def sim_deployment(dep_id: str, replicas: int, **kw: object) -> deploy_pb2.DeploymentRecord:
    """A deployment of the sim engine, as `basalt deploy` would write it."""
    args = {"engine_args": dict(FAST_SIM_ARGS), **kw}
    return Deployment(id=dep_id, model=f"{dep_id}-model", engine="sim", replicas=replicas,
                      **args).to_record(created_ts=time.time())  # type: ignore[arg-type]


def runtimes(owner: str) -> dict[int, str]:
    """Live `services.runtime` processes started with `--owner owner`: pid -> replica id."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        flags = dict(itertools.pairwise(argv))
        if state != "Z" and "services.runtime" in argv and flags.get("--owner") == owner:
            out[int(entry.name)] = flags.get("--replica-id", "")
    return out


def runtime_pids(owner: str) -> list[int]:
    return sorted(runtimes(owner))


def kill_runtimes(owner: str) -> None:
    """SIGKILL the runtimes a test's control plane left (by pid; only this owner's)."""
    for pid in runtime_pids(owner):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def ours(records: dict[str, events_pb2.ReplicaRecord], owner: str,
         deployment: str) -> dict[str, events_pb2.ReplicaRecord]:
    return {k: r for k, r in records.items() if r.owner == owner and r.deployment == deployment}


def ready_ids(records: dict[str, events_pb2.ReplicaRecord]) -> set[str]:
    return {k for k, r in records.items() if r.state == events_pb2.REPLICA_STATE_READY}


async def eventually(probe: Callable[[], Awaitable[T | None]], timeout: float,
                     what: str, every: float = 0.1) -> T:
    """Poll `probe` until it returns something truthy; AssertionError naming `what` after
    `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = await probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        await asyncio.sleep(every)


@dataclass
class McmProcess(ServiceProcess):
    """`python -m services.mcm ...` with its own state dir, ready file and log file."""

    nats_url: str
    workdir: Path
    extra: list[str] = field(default_factory=list)
    name: str = "mcm"
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    owner: str = ""

    @property
    def state_dir(self) -> Path:
        return self.workdir / "state"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> McmProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{self.name}.ready.json"
        ready.unlink(missing_ok=True)
        self._spawn("services.mcm", [
            "--nats-url", self.nats_url, "--http-port", str(free_port()),
            "--state-dir", str(self.state_dir), "--ready-file", str(ready), *self.extra,
        ])
        self._wait_for(ready, timeout, "mcm", poll_s=0.05)
        info = json.loads(ready.read_text())
        self.http_port, self.owner = info["http_port"], info["owner"]
        return self

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

