"""Shared fixtures: a real nats-server on a free port, and the tiny test model built locally."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from basalt_tools.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
# Built once per checkout by `make test` (basalt make-tiny-model); rebuilt here when missing.
TINY_MODEL_DIR = Path(os.environ.get("BASALT_TINY_MODEL", REPO / ".basalt" / "models" / "tiny-llama"))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, its store in a temporary folder."""
    store = tmp_path_factory.mktemp("nats")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[object]:
    """A NATS client connected to the session's server."""
    from basalt.bus import connect

    client = await connect(nats_server.url, name="test")
    yield client
    await client.close()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny Llama model (random weights, locally trained tokenizer) and a tiny LoRA adapter."""
    from basalt_tools.tinymodel import make_tiny_model

    return make_tiny_model(TINY_MODEL_DIR)


# -- nothing survives the suite --------------------------------------------------------------
# Every process the suite starts inherits this variable (set before any fixture runs); at the
# end, any process still carrying it, other than pytest itself and the multiprocessing
# helpers that end with it, is a leak: the run fails, naming them, and they are killed.
SESSION_MARK = "BASALT_TEST_SESSION"
_LEAK_GRACE_S = 10.0


def pytest_configure(config: pytest.Config) -> None:
    os.environ.setdefault(SESSION_MARK, f"{os.getpid()}-{time.time_ns()}")


def survivors(mark: str, me: int) -> dict[int, str]:
    """pid → command line of every process whose environment carries `mark`."""
    needle = f"{SESSION_MARK}={mark}".encode()
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue  # gone meanwhile, or not ours to read
        if parent == me and "multiprocessing.resource_tracker" in cmd:
            continue  # ends with this interpreter
        found[int(entry.name)] = cmd.strip()
    return found


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    mark = os.environ.get(SESSION_MARK)
    if not mark or not Path("/proc/self/environ").exists():
        return
    deadline = time.monotonic() + _LEAK_GRACE_S
    left = survivors(mark, os.getpid())
    while left and time.monotonic() < deadline:  # a process being stopped just now
        time.sleep(0.2)
        left = survivors(mark, os.getpid())
    if not left:
        return
    for pid in left:
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    lines = "\n".join(f"  {pid}: {cmd[:200]}" for pid, cmd in sorted(left.items()))
    print(f"\nFAILED: {len(left)} process(es) started by the suite outlived it (killed now):\n"
          f"{lines}", file=sys.stderr)
    session.exitstatus = pytest.ExitCode.TESTS_FAILED
