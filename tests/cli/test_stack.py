"""`basalt down` and `basalt reset` on a state dir, with stand-ins for `basalt up` (small local
processes, no servers); and what `basalt deploy` prints and waits for (pure)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from basalt.client import Applied, Deployment
from basalt_cli import stack
from basalt_cli.views import applied_text, health_text, progress

# Stands in for `basalt up`: its argv reads `... basalt_cli up ...`, and SIGTERM ends it
# after a short stop, as the real one stops its services.
FAKE_UP = ("import signal, sys, time\n"
           "def stop(*_):\n    time.sleep(0.3)\n    sys.exit(0)\n"
           "signal.signal(signal.SIGTERM, stop)\n"
           "print('up', flush=True)\n"
           "time.sleep(60)\n")


@pytest.fixture
def fake_up(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen([sys.executable, "-c", FAKE_UP, "basalt_cli", "up"],
                            stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline() == "up\n"
    yield proc
    if proc.poll() is None:
        proc.kill()
    proc.wait()


def _pid_file(state: Path, pid: int) -> None:
    state.mkdir(parents=True, exist_ok=True)
    (state / stack.PID_FILE).write_text(json.dumps({"pid": pid, "started": time.time(),
                                                    "ports": {"mcm": 8081}}))


def test_the_pid_file_is_written_and_removed_only_by_its_process(tmp_path: Path) -> None:
    info = stack.write_pid_file(tmp_path, {"mcm": 9001})
    assert stack.read_pid_file(tmp_path) == info and info.pid == os.getpid()
    assert info.ports == {"mcm": 9001}
    stack.remove_pid_file(tmp_path)
    assert not (tmp_path / stack.PID_FILE).exists()
    _pid_file(tmp_path, os.getpid() + 1_000_000)  # another process's
    stack.remove_pid_file(tmp_path)
    assert (tmp_path / stack.PID_FILE).exists()


def test_down_with_nothing_running_says_so(tmp_path: Path) -> None:
    said: list[str] = []
    assert stack.down(tmp_path, out=said.append) == 0
    assert said == [f"no stack running (state dir {tmp_path})"]


def test_down_leaves_a_pid_that_is_not_basalt_up_alone(tmp_path: Path) -> None:
    other = subprocess.Popen(["sleep", "30"])
    try:
        _pid_file(tmp_path, other.pid)
        said: list[str] = []
        assert stack.down(tmp_path, out=said.append) == 0
        assert "no stack running" in said[0] and "stale" in said[0]
        assert other.poll() is None and not (tmp_path / stack.PID_FILE).exists()
    finally:
        other.kill()
        other.wait()


def test_down_stops_basalt_up_and_waits_until_it_is_gone(
        tmp_path: Path, fake_up: subprocess.Popen[str]) -> None:
    _pid_file(tmp_path, fake_up.pid)
    assert stack.running(tmp_path) is not None
    said: list[str] = []
    assert stack.down(tmp_path, timeout=30, out=said.append) == 0
    assert fake_up.wait(timeout=5) == 0
    assert said[-1].startswith(f"stopped basalt up (pid {fake_up.pid})")


def _state(tmp_path: Path) -> Path:
    state = tmp_path / "state"
    for d in ("models/tiny-llama", "nats/jetstream", "mcm", "logs", "secrets/nats", "coldstart"):
        (state / d).mkdir(parents=True)
    for f in ("models/tiny-llama/config.json", "api-key", "management-key", "mcm.ready.json",
              "logs/mcm.log", "notes.txt"):
        (state / f).write_text("x")
    return state


def test_reset_keeps_models_the_weight_cache_and_what_it_does_not_know(tmp_path: Path) -> None:
    state = _state(tmp_path)
    said: list[str] = []
    assert stack.reset(state, yes=False, ask=lambda _: "n", out=said.append) == 1
    assert (state / "nats").exists() and said == ["nothing removed"]
    assert stack.reset(state, yes=True, out=said.append) == 0
    assert sorted(p.name for p in state.iterdir()) == ["coldstart", "models", "notes.txt"]
    assert (state / "models" / "tiny-llama" / "config.json").exists()
    assert stack.reset(state, yes=True, out=said.append) == 0 and said[-1].startswith("nothing")


def test_reset_refuses_while_a_stack_runs(tmp_path: Path, fake_up: subprocess.Popen[str]) -> None:
    state = _state(tmp_path)
    _pid_file(state, fake_up.pid)
    said: list[str] = []
    assert stack.reset(state, yes=True, out=said.append) == 1
    assert "basalt down" in said[0] and (state / "nats").exists()


def test_metrics_ports_only_while_the_stack_runs(tmp_path: Path,
                                                 fake_up: subprocess.Popen[str]) -> None:
    (tmp_path / "router.ready.json").write_text(json.dumps({"metrics_port": 9400}))
    assert stack.metrics_ports(tmp_path) == {}
    _pid_file(tmp_path, fake_up.pid)
    assert stack.metrics_ports(tmp_path) == {"router": "127.0.0.1:9400"}


# -- deploy's words and its wait (pure) -------------------------------------------------------


def _dep(**kw: object) -> Deployment:
    view = {"id": "d1", "model": "m", "desired_replicas": 2, "active_replica_count": 2,
            "spec_revision": "r2", "health": {"state": "ok"},
            "replicas": [{"id": "a", "spec_revision": "r2"}, {"id": "b", "spec_revision": "r2"}]}
    return Deployment.from_view({**view, **kw})


def test_progress_is_done_when_ready_healthy_and_on_the_new_revision() -> None:
    assert progress(_dep()).done
    rolling = progress(_dep(health={"state": "rolling"},
                            replicas=[{"id": "a", "spec_revision": "r1"}]))
    assert not rolling.done and rolling.stopped is None and "1 on an old revision" in rolling.words
    assert not progress(_dep(active_replica_count=1, health={"state": "starting"})).done
    zero = _dep(desired_replicas=0, active_replica_count=0, replicas=[],
                health={"state": "scaled_to_zero"})
    assert progress(zero).done


def test_progress_stops_on_failed_and_unplaced_with_the_reason() -> None:
    failed = progress(_dep(health={"state": "failed", "reason": "load: no config.json"}))
    assert failed.stopped == "d1: FAILED: load: no config.json"
    unplaced = _dep(health={"state": "unplaced", "reason": "no cluster fits 8x H100"})
    assert progress(unplaced).stopped == "d1: UNPLACED: no cluster fits 8x H100"
    assert health_text(Deployment.from_view({"id": "x", "model": "m"})) == "-"


def test_applied_text_says_created_unchanged_or_what_changed() -> None:
    view = {"id": "d1", "model": "m", "desired_replicas": 1, "spec": {"engine": "sim"}}
    assert applied_text(Applied.from_view({**view, "created": True})) == (
        "d1: created (sim, 1 replica(s))")
    assert applied_text(Applied.from_view({**view, "created": False})) == "d1: unchanged"
    changed = Applied.from_view({**view, "created": False, "rollout": True, "changes": [
        {"field": "engine_args.max_model_len", "old": "512", "new": "1024"}]})
    assert applied_text(changed) == ("d1: changed engine_args.max_model_len (512 -> 1024); "
                                     "replicas will be replaced one at a time (each new one "
                                     "READY before an old one stops)")
