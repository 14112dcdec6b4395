"""LocalProvider: replicas as `python -m services.runtime` processes on this host (does I/O).

Per replica, under the state dir: `<id>.log` (stdout and stderr, kept after it exits, for
`basalt logs`), `<id>.ready.json` (the replica record, written by the runtime once ready) and
`<id>.handle.json` (pid and labels, while it runs). A later LocalProvider on the same state dir
finds still-running replicas through the handle files (`list_owned`) and can stop them; the
pid is trusted only while /proc shows it running that replica id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from basalt.ids import ReplicaId
from basalt.log import get_logger
from services.mcm.core.errors import ReplicaExited, UnknownCluster
from services.mcm.core.inventory import Cluster, ClusterName
from services.mcm.core.provider import LaunchHandle, LaunchRequest, runtime_args

# When the provider started the process: the replica's cold start counts from it.
LAUNCHED_TS_ENV = "BASALT_RUNTIME_LAUNCHED_TS"

log = get_logger(__name__)

REPO_ROOT = Path(__file__).resolve().parents[3]
# The runtime's own labels when none are given (services/runtime/config.py defaults).
LOCAL_CLUSTER = Cluster(ClusterName("local"), "local", "local", "local-a", "", 4, 0.0)


@dataclass(slots=True)
class _Running:
    handle: LaunchHandle
    # None for a replica found through its handle file (not our child): signalled by pid.
    proc: subprocess.Popen[bytes] | None


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return []
    return [] if state == "Z" else raw.decode(errors="replace").split("\0")


def _runs_replica(pid: int, replica_id: str) -> bool:
    """Whether `pid` is alive and is the runtime process of `replica_id` (guards pid reuse)."""
    argv = _cmdline(pid)
    return "services.runtime" in argv and any(
        a == "--replica-id" and b == replica_id for a, b in itertools.pairwise(argv))


class LocalProvider:
    """Starts replicas as child processes; `close()` stops every one it started or found."""

    name = "local"

    def __init__(self, state_dir: Path, *, clusters: Sequence[Cluster] = (LOCAL_CLUSTER,),
                 grace_s: float = 40.0, extra_args: Sequence[str] = (),
                 env: Mapping[str, str] | None = None, python: str = sys.executable) -> None:
        self.state_dir = Path(state_dir)
        self._clusters = list(clusters)
        self.grace_s = grace_s
        self.extra_args = list(extra_args)
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
        self.python = python
        self._running: dict[ReplicaId, _Running] = {}
        self._exit_codes: dict[ReplicaId, int | None] = {}

    def clusters(self) -> list[Cluster]:
        return list(self._clusters)

    def log_path(self, replica_id: str) -> Path:
        return self.state_dir / f"{replica_id}.log"

    def ready_path(self, replica_id: str) -> Path:
        return self.state_dir / f"{replica_id}.ready.json"

    def _handle_path(self, replica_id: str) -> Path:
        return self.state_dir / f"{replica_id}.handle.json"

    def command(self, req: LaunchRequest) -> list[str]:
        """The full command line that starts `req` (extra_args last: they can add flags)."""
        return [self.python, "-m", "services.runtime", *runtime_args(req),
                "--ready-file", str(self.ready_path(req.replica_id)), *self.extra_args]

    async def launch(self, req: LaunchRequest) -> LaunchHandle:
        known = {c.name for c in self._clusters}
        if req.cluster not in known:
            raise UnknownCluster(req.cluster, list(known))
        current = self._running.get(req.replica_id)
        if current is not None and self._alive(current):
            return current.handle
        cmd = self.command(req)
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.ready_path(req.replica_id).unlink(missing_ok=True)
        proc = await asyncio.to_thread(self._spawn, cmd, self.log_path(req.replica_id), req.env)
        handle = LaunchHandle(
            req.replica_id, req.deployment_id, req.owner, self.name, req.cluster, req.cloud,
            req.region, req.zone, time.time(), proc.pid, str(self.log_path(req.replica_id)),
            req.accelerator, req.accelerator_count, req.spec_revision,
        )
        self._running[req.replica_id] = _Running(handle, proc)
        self._exit_codes.pop(req.replica_id, None)
        self._handle_path(req.replica_id).write_text(json.dumps(asdict(handle)))
        log.info("replica_launched", replica_id=req.replica_id, pid=proc.pid,
                 cluster=req.cluster, deployment=req.deployment_id)
        return handle

    def _spawn(self, cmd: list[str], log_path: Path,
               env: Mapping[str, str]) -> subprocess.Popen[bytes]:
        with open(log_path, "ab") as out:
            # Its own process group: a SIGKILL takes the engine's worker processes with it
            # (vLLM's EngineCore outlives a killed parent otherwise).
            return subprocess.Popen(cmd, cwd=REPO_ROOT, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL,
                                    env={**self.env, **env, LAUNCHED_TS_ENV: f"{time.time():.3f}"},
                                    start_new_session=True)

    def _alive(self, run: _Running) -> bool:
        if run.proc is not None:
            return run.proc.poll() is None
        return run.handle.pid is not None and _runs_replica(run.handle.pid, run.handle.replica_id)

    def _signal(self, run: _Running, sig: signal.Signals) -> None:
        if not self._alive(run):
            return
        pid = run.proc.pid if run.proc is not None else run.handle.pid
        if pid is None:
            return
        try:
            if sig == signal.SIGKILL:
                _kill_group(pid)
            else:  # SIGTERM to the runtime alone: it drains, then stops its engine itself
                os.kill(pid, sig)
        except ProcessLookupError:
            pass

    async def _wait_gone(self, run: _Running, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(run):
            if time.monotonic() >= deadline:
                return False
            await asyncio.sleep(0.05)
        return True

    def _forget(self, run: _Running) -> None:
        rid = run.handle.replica_id
        self._exit_codes[rid] = run.proc.poll() if run.proc is not None else None
        self._running.pop(rid, None)
        self._handle_path(rid).unlink(missing_ok=True)

    async def stop(self, replica_id: ReplicaId) -> None:
        run = self._running.get(replica_id) or self._found(replica_id)
        if run is None:
            return
        self._signal(run, signal.SIGTERM)
        if not await self._wait_gone(run, self.grace_s):
            log.warning("replica_kill_after_grace", replica_id=replica_id, grace_s=self.grace_s)
            self._signal(run, signal.SIGKILL)
            await self._wait_gone(run, 10.0)
        self._forget(run)
        log.info("replica_stopped", replica_id=replica_id,
                 returncode=self._exit_codes.get(replica_id))

    def kill(self, replica_id: ReplicaId) -> bool:
        """SIGKILL now, no drain (a simulated crash or outage); True if it was running."""
        run = self._running.get(replica_id) or self._found(replica_id)
        if run is None or not self._alive(run):
            return False
        self._signal(run, signal.SIGKILL)
        if run.proc is not None:
            run.proc.wait(timeout=10.0)
        self._forget(run)
        return True

    def returncode(self, replica_id: str) -> int | None:
        """Exit code of a replica that ended (None while running, unknown, or not our child)."""
        run = self._running.get(ReplicaId(replica_id))
        if run is not None:
            return run.proc.poll() if run.proc is not None else None
        return self._exit_codes.get(ReplicaId(replica_id))

    def _found(self, replica_id: str) -> _Running | None:
        """A replica a previous provider on this state dir started that still runs."""
        path = self._handle_path(replica_id)
        try:
            handle = LaunchHandle(**json.loads(path.read_text()))
        except (OSError, ValueError, TypeError):
            return None
        if handle.pid is None or not _runs_replica(handle.pid, handle.replica_id):
            path.unlink(missing_ok=True)
            return None
        run = _Running(handle, None)
        self._running[handle.replica_id] = run
        return run

    async def list_owned(self, owner: str) -> list[LaunchHandle]:
        if self.state_dir.is_dir():
            for path in sorted(self.state_dir.glob("*.handle.json")):
                rid = ReplicaId(path.name.removesuffix(".handle.json"))
                if rid not in self._running:
                    self._found(rid)
        return sorted((r.handle for r in self._running.values()
                       if r.handle.owner == owner and self._alive(r)),
                      key=lambda h: h.replica_id)

    async def wait_ready(self, replica_id: str, timeout: float = 60.0) -> dict[str, object]:
        """The replica record (as JSON) once the replica is ready; raises ReplicaExited if it
        ends first, TimeoutError after `timeout` seconds."""
        ready = self.ready_path(replica_id)
        deadline = time.monotonic() + timeout
        while not ready.exists():
            run = self._running.get(ReplicaId(replica_id))
            if run is None or not self._alive(run):
                raise ReplicaExited(replica_id, self.returncode(replica_id), self.log_tail(replica_id))
            if time.monotonic() >= deadline:
                raise TimeoutError(f"replica {replica_id} not ready in {timeout}s")
            await asyncio.sleep(0.05)
        return dict(json.loads(ready.read_text()))

    def log_tail(self, replica_id: str, n: int = 4000) -> str:
        path = self.log_path(replica_id)
        return path.read_text(errors="replace")[-n:] if path.exists() else ""

    def running(self) -> list[ReplicaId]:
        return sorted(rid for rid, run in self._running.items() if self._alive(run))

    async def close(self) -> None:
        """Stop (drain, then kill after the grace period) every replica started or found."""
        await asyncio.gather(*(self.stop(rid) for rid in list(self._running)))


def _kill_group(pid: int) -> None:
    """SIGKILL the replica and every process of its group (it leads one: start_new_session);
    one started before replicas led their own group gets a plain SIGKILL."""
    try:
        os.killpg(pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        os.kill(pid, signal.SIGKILL)
