"""Start a real autoscaler as a subprocess for integration tests (does I/O)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from basalt_tools.natsserver import free_port
from tests.service_process import ServiceProcess


@dataclass
class AutoscalerProcess(ServiceProcess):
    """`python -m services.autoscaler ...` with its own ready file, log file and metrics port."""

    nats_url: str
    workdir: Path
    holder_id: str = ""
    tick: float = 1.0
    lease_ttl: float = 3.0
    extra: list[str] = field(default_factory=list)
    name: str = "autoscaler"
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0
    holder: str = ""

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.name}.log"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 30.0) -> AutoscalerProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"{self.name}.ready.json"
        ready.unlink(missing_ok=True)
        args = ["--nats-url", self.nats_url, "--tick", str(self.tick),
                "--lease-ttl", str(self.lease_ttl), "--metrics-port", str(free_port()),
                "--ready-file", str(ready), *self.extra]
        if self.holder_id:
            args += ["--holder-id", self.holder_id]
        self._spawn("services.autoscaler", args)
        self._wait_for(ready, timeout, "autoscaler", poll_s=0.05)
        info = json.loads(ready.read_text())
        self.metrics_port, self.holder = info["metrics_port"], info["holder"]
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
