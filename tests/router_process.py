"""Start a real router as a subprocess for integration tests (does I/O)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from basalt_tools.natsserver import free_ports
from tests.service_process import ServiceProcess


@dataclass
class RouterProcess(ServiceProcess):
    nats_url: str
    workdir: Path
    deployments_file: Path | None = None
    extra: list[str] = field(default_factory=list)
    name: str = "router"
    proc: subprocess.Popen[bytes] | None = None
    http_port: int = 0
    grpc_port: int = 0

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    def start(self, timeout: float = 30.0) -> RouterProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{self.name}.ready.json"
        ready.unlink(missing_ok=True)
        http_port, grpc_port = free_ports(2)
        # Any free metrics port (the default, 9101, is one per machine): tests run many routers.
        metrics = [] if "--metrics-port" in self.extra else ["--metrics-port", "0"]
        args = ["--nats-url", self.nats_url, "--http-port", str(http_port),
                "--grpc-port", str(grpc_port), "--ready-file", str(ready), *metrics, *self.extra]
        if self.deployments_file:
            args += ["--deployments-file", str(self.deployments_file)]
        self._spawn("services.router", args)
        self._wait_for(ready, timeout, "router")
        ports = json.loads(ready.read_text())
        self.http_port, self.grpc_port = ports["http_port"], ports["grpc_port"]
        return self

    def kill(self) -> None:
        """SIGTERM, then SIGKILL if it has not exited within 10 s."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def write_deployments(path: Path, deployments: list[dict], environments: list[dict] | None = None) -> Path:
    import yaml

    path.write_text(yaml.safe_dump({"deployments": deployments, "environments": environments or []}))
    return path
