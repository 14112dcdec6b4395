"""The daily CLI against a real control plane: deploy, status, scale, promote, logs."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from basalt_tools.natsserver import NatsServer
from tests.mcm_process import FAST_SIM_ARGS, McmProcess, kill_runtimes

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _basalt(mcm: McmProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "BASALT_MCM_URL": mcm.base_url, "BASALT_API_KEY": "unused"}
    return subprocess.run([sys.executable, "-m", "basalt_cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=False)


def _rows(status_out: str) -> dict[str, list[str]]:
    return {line.split()[0]: line.split() for line in status_out.splitlines() if line.strip()}


def _until_ready(mcm: McmProcess, dep: str, n: int, timeout: float = 40.0) -> dict[str, list[str]]:
    deadline = time.monotonic() + timeout
    while True:
        rows = _rows(_basalt(mcm, "status").stdout)
        if dep in rows and rows[dep][5] == str(n):
            return rows
        if time.monotonic() > deadline:
            raise AssertionError(f"{dep} never had {n} ready:\n{rows}")
        time.sleep(0.5)


def test_deploy_status_scale_promote_logs(nats_server: NatsServer, tmp_path: Path) -> None:
    mcm = McmProcess(nats_server.url, tmp_path / "mcm", extra=["--stop-replicas-on-exit"]).start()
    try:
        spec = {"deployments": [
            {"id": f"cli-{v}", "model": "climodel", "engine": "sim", "replicas": 1,
             "engine_args": FAST_SIM_ARGS} for v in ("v1", "v2")],
            "environments": [{"model": "climodel", "name": "production", "deployment_id": "cli-v1"}]}
        f = tmp_path / "d.yaml"
        f.write_text(yaml.safe_dump(spec))
        out = _basalt(mcm, "deploy", str(f))
        assert out.returncode == 0, out.stderr
        rows = _until_ready(mcm, "cli-v1", 1)
        assert rows["cli-v1"][6] == "production" and rows["cli-v1"][2] == "sim"
        assert rows["cli-v1"][7] == "fixed"  # no autoscaling settings: a fixed count

        assert _basalt(mcm, "scale", "cli-v1", "2").returncode == 0
        rows = _until_ready(mcm, "cli-v1", 2)
        replicas = [k for k, r in rows.items() if len(r) > 1 and r[1] == "cli-v1" and r[2] == "ready"]
        assert len(replicas) == 2

        out = _basalt(mcm, "promote", "cli-v2")
        assert out.returncode == 0, out.stderr
        rows = _rows(_basalt(mcm, "status").stdout)
        assert rows["cli-v2"][6] == "production" and rows["cli-v1"][4] == "0"

        out = _basalt(mcm, "logs", replicas[0], "-n", "5", "--state-dir", str(mcm.state_dir))
        assert out.returncode == 0 and "replica_ready" in out.stdout, out.stderr
        bad = _basalt(mcm, "scale", "no-such-deployment", "1")
        assert bad.returncode == 1 and "no-such-deployment" in bad.stderr
    finally:
        mcm.terminate()
        kill_runtimes(mcm.owner)
