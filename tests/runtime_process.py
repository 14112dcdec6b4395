"""Start a real runtime replica as a subprocess for integration tests (does I/O)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from basalt.natsserver import free_port

REPO = Path(__file__).resolve().parent.parent


@dataclass
class RuntimeProcess:
    """`python -m services.runtime ...` with its own ready file and log file."""

    nats_url: str
    workdir: Path
    engine: str = "sim"
    replica_id: str = "r1"
    extra: list[str] = field(default_factory=list)
    grpc_port: int = 0
    proc: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.replica_id}.log"

    def start(self, timeout: float = 60.0) -> RuntimeProcess:
        return self.launch().wait_ready(timeout)

    @property
    def ready_path(self) -> Path:
        return self.workdir / f"{self.replica_id}.ready.json"

    def launch(self) -> RuntimeProcess:
        """Start the process without waiting (start several, then wait for each)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.grpc_port = self.grpc_port or free_port()
        self.ready_path.unlink(missing_ok=True)
        cmd = [
            sys.executable, "-m", "services.runtime", "--engine", self.engine,
            "--replica-id", self.replica_id, "--grpc-port", str(self.grpc_port),
            "--nats-url", self.nats_url, "--ready-file", str(self.ready_path), *self.extra,
        ]
        with open(self.log_path, "ab") as out:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONUNBUFFERED": "1"})
        return self

    def wait_ready(self, timeout: float = 60.0) -> RuntimeProcess:
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.ready_path.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"runtime exited {self.proc.returncode}:\n{self.log_tail()}")
            if time.monotonic() > deadline:
                self.kill()
                raise TimeoutError(f"runtime not ready in {timeout}s:\n{self.log_tail()}")
            time.sleep(0.1)
        self.record = json.loads(self.ready_path.read_text())
        return self

    def log_tail(self, n: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-n:] if self.log_path.exists() else ""

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)

    def terminate(self, timeout: float = 60.0) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=timeout)

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
