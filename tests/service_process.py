"""A service run as a subprocess for integration tests: spawn, wait until ready, stop (does I/O).

What the helpers share: start `python -m <service>` with its output in a log file, wait for its
ready file, read the log's tail, stop it.

RuntimeProcess, RouterProcess and McmProcess (dataclasses) derive from `ServiceProcess`, which
keeps no fields of its own, so their fields and their order stay theirs.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


class ServiceProcess:
    """A service's subprocess; subclasses give `proc` (a field) and `log_path`."""

    proc: subprocess.Popen[bytes] | None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

    def _spawn(self, module: str, args: list[str]) -> None:
        """Start `python -m module args` from the repository root, output appended to the log."""
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", module, *args], cwd=REPO, stdout=out,
                stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                start_new_session=True,  # its own group: kill() takes its children too
            )

    def _wait_for(self, ready: Path, timeout: float, what: str, poll_s: float = 0.1) -> None:
        """Wait until `ready` exists; RuntimeError if the process exits first, TimeoutError
        (after `kill`) if `timeout` passes; both carry the log's tail."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not ready.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{what} exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"{what} not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(poll_s)

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def terminate(self, timeout: float = 60.0) -> int:
        """SIGTERM and wait for the exit code."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        """SIGKILL the process and its group: no shutdown at all (a crashed host), and no
        engine worker left behind."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
