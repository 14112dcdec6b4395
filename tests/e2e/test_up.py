"""`basalt up` brings up the whole stack, prints a curl line that works, and Ctrl-C (or
`basalt down` from another terminal) leaves nothing running."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from basalt.client import Client
from basalt_tools.natsserver import free_ports

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _children_alive(pattern: str) -> list[str]:
    out = subprocess.run(
        ["pgrep", "-af", pattern], capture_output=True, text=True, check=False
    ).stdout
    return [ln for ln in out.splitlines() if "pgrep" not in ln]


@pytest.mark.parametrize("extra", [[], ["--nats-tls"]], ids=["default", "nats-tls"])
def test_up_serves_the_default_deployment_and_stops_cleanly(
        tmp_path: Path, tiny_model: Path, extra: list[str]) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "tiny-llama").symlink_to(tiny_model)
    ports = [str(p) for p in free_ports(4)]
    cmd = [sys.executable, "-m", "basalt_cli", "up", "--engine", "sim", "--state-dir", str(state),
           "--nats-port", ports[0], "--http-port", ports[1], "--grpc-port", ports[2],
           "--mcm-port", ports[3], "--router-metrics-port", "0", *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        curl = next((ln.strip() for ln in lines if ln.strip().startswith("curl ")), None)
        assert curl, f"no curl line printed:\n{text}"
        assert re.search(r"API key:\s+bsk_", text)
        out = subprocess.run(shlex.split(curl), capture_output=True, text=True, timeout=60,
                             check=False)
        assert '"completion_tokens"' in out.stdout, out.stdout + out.stderr
        assert '"content"' in out.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
    assert proc.returncode == 0, "".join(lines)
    time.sleep(0.5)
    assert not _children_alive(str(state)), "processes left running after Ctrl-C"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("BASALT_MCM_URL", "BASALT_API_KEY")}
    return subprocess.run([sys.executable, "-m", "basalt_cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=240, check=False)


def test_down_stops_up_from_another_terminal_and_reset_clears_its_state(
        tmp_path: Path, tiny_model: Path) -> None:
    """`basalt up` writes <state-dir>/up.pid and its metrics ports; `status` finds the stack by
    it; `reset` and a second `up` refuse while it runs; `down` stops it and everything it
    started; then `reset` removes its state and keeps the models."""
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "tiny-llama").symlink_to(tiny_model)
    ports = [str(p) for p in free_ports(4)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "basalt_cli", "up", "--engine", "sim", "--state-dir", str(state),
         "--nats-port", ports[0], "--http-port", ports[1], "--grpc-port", ports[2],
         "--mcm-port", ports[3], "--router-metrics-port", "0"],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"})
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        while line := proc.stdout.readline():
            lines.append(line)
            if "Ctrl-C stops everything" in line:
                break
        text = "".join(lines)
        assert re.search(r"Metrics:\s+coldstart :\d+\s+mcm :\d+\s+router :\d+", text), text
        info = json.loads((state / "up.pid").read_text())
        assert info["pid"] == proc.pid and info["ports"]["mcm"] == int(ports[3])
        key = re.search(r"API key:\s+(bsk_\S+)", text)
        assert key, text
        with Client(f"http://127.0.0.1:{ports[3]}", (state / "management-key").read_text().strip(),
                    inference_url=f"http://127.0.0.1:{ports[1]}",
                    inference_key=key.group(1)) as sdk:  # the SDK's two doors
            assert sdk.find_deployment("tiny-llama-sim").model == "tiny-llama"
            answer = sdk.chat("tiny-llama", [{"role": "user", "content": "Hi"}], max_tokens=4)
            assert answer["usage"]["completion_tokens"] >= 1, answer

        out = _cli("status", "--state-dir", str(state))  # the pid file names the mcm port
        assert out.returncode == 0, out.stderr
        assert "SERVICE" in out.stdout and re.search(r"router\s+127\.0\.0\.1:\d+", out.stdout)
        out = _cli("reset", "--yes", "--state-dir", str(state))
        assert out.returncode == 1 and "basalt down" in out.stdout
        out = _cli("up", "--engine", "sim", "--state-dir", str(state))
        assert out.returncode == 1 and "running" in out.stderr

        out = _cli("down", "--state-dir", str(state))
        assert out.returncode == 0 and f"stopped basalt up (pid {proc.pid})" in out.stdout, (
            out.stdout + out.stderr)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    time.sleep(0.5)
    assert not _children_alive(str(state)), "processes left running after basalt down"
    assert not (state / "up.pid").exists() and not list(state.glob("*.ready.json"))
    assert _cli("down", "--state-dir", str(state)).stdout.startswith("no stack running")

    out = _cli("reset", "--yes", "--state-dir", str(state))
    assert out.returncode == 0, out.stdout + out.stderr
    assert sorted(p.name for p in state.iterdir()) == ["coldstart", "models"]
    assert (state / "models" / "tiny-llama" / "config.json").exists()


def test_up_stops_at_once_with_the_reason_when_the_deployment_cannot_be_placed(
        tmp_path: Path, tiny_model: Path) -> None:
    state = tmp_path / "state"
    (state / "models").mkdir(parents=True)
    (state / "models" / "tiny-llama").symlink_to(tiny_model)
    f = tmp_path / "d.yaml"
    f.write_text("deployments:\n- {id: big-v1, model: big, engine: sim, replicas: 1, "
                 "accelerator: H100, accelerator_count: 8}\n")
    ports = [str(p) for p in free_ports(4)]
    t0 = time.monotonic()
    out = subprocess.run(
        [sys.executable, "-m", "basalt_cli", "up", "--engine", "sim", "--state-dir", str(state),
         "--deployment-file", str(f), "--nats-port", ports[0], "--http-port", ports[1],
         "--grpc-port", ports[2], "--mcm-port", ports[3], "--router-metrics-port", "0"],
        cwd=REPO, capture_output=True, text=True, timeout=180, check=False)
    assert out.returncode == 1, out.stdout + out.stderr
    assert "big-v1: UNPLACED: " in out.stderr and "H100" in out.stderr, out.stdout + out.stderr
    assert time.monotonic() - t0 < 120 and "stopped; nothing left running." in out.stdout
    assert not _children_alive(str(state)) and not (state / "up.pid").exists()
