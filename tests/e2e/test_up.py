"""`basalt up` brings up the whole stack, prints a curl line that works, and Ctrl-C leaves
nothing running."""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

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
           "--mcm-port", ports[3], *extra]
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
