"""Start a real coldstart service (one node's weight cache) as a subprocess (does I/O)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from basalt_tools.natsserver import free_port
from tests.service_process import ServiceProcess


@dataclass
class ColdstartProcess(ServiceProcess):
    """`python -m services.coldstart --node NODE --cache-dir ...` with its own ready file."""

    nats_url: str
    workdir: Path
    node: str = "local"
    budget_gb: float = 1.0
    warm_gb: float = 0.5
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None
    metrics_port: int = 0

    @property
    def log_path(self) -> Path:
        return self.workdir / f"coldstart-{self.node}.log"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / f"cache-{self.node}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.metrics_port}/metrics"

    def start(self, timeout: float = 30.0) -> ColdstartProcess:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ready = self.workdir / f"coldstart-{self.node}.ready.json"
        ready.unlink(missing_ok=True)
        self._spawn("services.coldstart", [
            "--nats-url", self.nats_url, "--node", self.node, "--cache-dir", str(self.cache_dir),
            "--budget-gb", str(self.budget_gb), "--warm-gb", str(self.warm_gb),
            "--heartbeat", "1", "--metrics-port", str(free_port()), "--ready-file", str(ready),
            *self.extra])
        self._wait_for(ready, timeout, f"coldstart {self.node}", poll_s=0.05)
        self.metrics_port = json.loads(ready.read_text())["metrics_port"]
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
