"""The daily CLI against a real control plane: deploy (updates, --wait), status, scale, promote,
activate, deactivate, delete, logs; and what it says with no control plane."""

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


def _stop(mcm: McmProcess, *models: str) -> None:
    """Delete what the test deployed (the session's NATS outlives it), then stop the control
    plane and any replica it left."""
    for model in models:
        _basalt(mcm, "delete", model)
    mcm.terminate()
    kill_runtimes(mcm.owner)


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
        _stop(mcm, "climodel")


# -- lifecycle: delete, deactivate / activate, deploy updates and --wait ----------------------


def _file(tmp_path: Path, name: str, deployments: list[dict], envs: list[dict] | None = None) -> Path:
    f = tmp_path / name
    f.write_text(yaml.safe_dump({"deployments": deployments, "environments": envs or []}))
    return f


def _sim(dep_id: str, model: str, replicas: int = 1, **kw: object) -> dict:
    return {"id": dep_id, "model": model, "engine": "sim", "replicas": replicas,
            "engine_args": dict(FAST_SIM_ARGS), **kw}


def test_deactivate_activate_and_delete(nats_server: NatsServer, tmp_path: Path) -> None:
    mcm = McmProcess(nats_server.url, tmp_path / "mcm", extra=["--stop-replicas-on-exit"]).start()
    try:
        f = _file(tmp_path, "d.yaml", [_sim("del-v1", "delmodel"), _sim("del-v2", "delmodel", 0)],
                  [{"model": "delmodel", "name": "production", "deployment_id": "del-v1"}])
        assert (out := _basalt(mcm, "deploy", str(f))).returncode == 0, out.stderr
        _until_ready(mcm, "del-v1", 1)

        out = _basalt(mcm, "deactivate", "del-v1")
        assert out.returncode == 0 and "deactivated" in out.stdout, out.stderr
        assert _rows(_basalt(mcm, "status").stdout)["del-v1"][3] == "inactive"
        out = _basalt(mcm, "activate", "del-v1")
        assert out.returncode == 0 and "activated" in out.stdout, out.stderr
        _until_ready(mcm, "del-v1", 1)

        # production serves v1: refused, with both ways out
        out = _basalt(mcm, "delete", "del-v1")
        assert out.returncode == 1, out.stdout
        assert "production" in out.stderr and "basalt promote del-v2" in out.stderr
        assert "basalt delete delmodel" in out.stderr
        out = _basalt(mcm, "delete", "del-v2")
        assert out.returncode == 0 and "deleted deployment del-v2" in out.stdout, out.stderr
        out = _basalt(mcm, "delete", "delmodel")
        assert out.returncode == 0 and "del-v1" in out.stdout, out.stderr
        assert "del-v1" not in _rows(_basalt(mcm, "status").stdout)
        out = _basalt(mcm, "delete", "no-such-thing")
        assert out.returncode == 1 and "no model or deployment 'no-such-thing'" in out.stderr
    finally:
        _stop(mcm, "delmodel")


def test_deploy_reports_changes_and_waits_for_the_rollout(nats_server: NatsServer,
                                                          tmp_path: Path) -> None:
    """Needs the deployments API's PUT route (issue 11): created, unchanged, the changed fields,
    and --wait until every replica runs the new spec."""
    mcm = McmProcess(nats_server.url, tmp_path / "mcm", extra=["--stop-replicas-on-exit"]).start()
    try:
        f = _file(tmp_path, "d.yaml", [_sim("upd-v1", "updmodel")])
        out = _basalt(mcm, "deploy", str(f), "--wait", "--timeout", "60")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "upd-v1: created" in out.stdout and "ready after" in out.stdout

        out = _basalt(mcm, "deploy", str(f))
        assert out.returncode == 0 and "upd-v1: unchanged" in out.stdout, out.stdout + out.stderr

        f = _file(tmp_path, "d.yaml", [_sim("upd-v1", "updmodel", routing_policy="round_robin")])
        out = _basalt(mcm, "deploy", str(f))
        assert out.returncode == 0, out.stderr
        assert "routing_policy (kv -> round_robin)" in out.stdout and "no replica restarts" in out.stdout

        args = {**FAST_SIM_ARGS, "sim_num_blocks": "512"}  # a new engine flag: new replicas
        f = _file(tmp_path, "d.yaml", [_sim("upd-v1", "updmodel", routing_policy="round_robin",
                                            engine_args=args)])
        out = _basalt(mcm, "deploy", str(f), "--wait", "--timeout", "90")
        assert out.returncode == 0, out.stdout + out.stderr
        assert "replaced one at a time" in out.stdout and "ready after" in out.stdout
    finally:
        _stop(mcm, "updmodel")


def test_deploy_wait_stops_at_once_on_an_unplaceable_deployment(nats_server: NatsServer,
                                                                 tmp_path: Path) -> None:
    mcm = McmProcess(nats_server.url, tmp_path / "mcm", extra=["--stop-replicas-on-exit"]).start()
    try:
        f = _file(tmp_path, "d.yaml", [_sim("unp-v1", "unpmodel", accelerator="H100",
                                            accelerator_count=8)])
        t0 = time.monotonic()
        out = _basalt(mcm, "deploy", str(f), "--wait", "--timeout", "120")
        assert out.returncode == 1, out.stdout + out.stderr
        assert "UNPLACED" in out.stderr and time.monotonic() - t0 < 60
        status = _basalt(mcm, "status").stdout
        row = next(ln for ln in status.splitlines() if ln.startswith("unp-v1 "))
        assert "UNPLACED: " in row and "H100" in row, status
    finally:
        _stop(mcm, "unpmodel")


def test_without_a_control_plane_status_says_so_in_one_line(tmp_path: Path) -> None:
    from basalt_tools.natsserver import free_port

    env = {**os.environ, "BASALT_MCM_URL": f"http://127.0.0.1:{free_port()}",
           "BASALT_STATE_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "basalt_cli", "status"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 1 and out.stdout == ""
    assert out.stderr.count("\n") == 1 and "no control plane at http://127.0.0.1:" in out.stderr
    assert "basalt up" in out.stderr and "Errno" not in out.stderr


def test_version_is_the_installed_distributions() -> None:
    from importlib.metadata import version

    out = subprocess.run([sys.executable, "-m", "basalt_cli", "--version"], cwd=REPO,
                         capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0 and out.stdout.strip() == f"basalt {version('basalt')}"
