"""Start a real runtime replica as a subprocess for integration tests (does I/O)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from basalt_tools.natsserver import free_port
from tests.service_process import REPO, ServiceProcess  # noqa: F401 - tests import REPO from here


@dataclass
class RuntimeProcess(ServiceProcess):
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
        self._spawn("services.runtime", [
            "--engine", self.engine, "--replica-id", self.replica_id,
            "--grpc-port", str(self.grpc_port), "--nats-url", self.nats_url,
            "--ready-file", str(self.ready_path), *self.extra,
        ])
        return self

    def wait_ready(self, timeout: float = 60.0) -> RuntimeProcess:
        self._wait_for(self.ready_path, timeout, "runtime")
        self.record = json.loads(self.ready_path.read_text())
        return self

    def channel(self) -> grpc.aio.Channel:
        return grpc.aio.insecure_channel(self.address)
