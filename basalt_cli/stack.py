"""The local stack from outside it: `basalt up`'s pid file, `basalt down`, `basalt reset`, and
the services' metrics ports (does I/O: files, /proc, signals)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

PID_FILE = "up.pid"
# What `basalt up` and its services keep in the state dir, all of which `reset` removes;
# `models` (built or copied weights) stays, and anything not named here is left alone.
# What `reset` removes. Kept: `models` and `coldstart` (the node's weight cache: checked,
# content-addressed copies of weights, costly to fetch again; it republishes what it holds
# when it starts, so a cleared NATS learns it back).
STATE_ENTRIES = ("nats", "mcm", "logs", "secrets", "api-key", "management-key", PID_FILE)
STATE_GLOBS = ("*.ready.json", "*.ready.tmp", "*.tmp")
SERVICES = ("mcm", "router", "autoscaler", "coldstart")


@dataclass(frozen=True, slots=True)
class UpInfo:
    """What `<state-dir>/up.pid` holds: the `basalt up` process and its ports."""

    pid: int
    started: float
    ports: dict[str, int] = field(default_factory=dict)


def write_pid_file(state: Path, ports: dict[str, int]) -> UpInfo:
    info = UpInfo(os.getpid(), time.time(), dict(ports))
    state.mkdir(parents=True, exist_ok=True)
    tmp = state / (PID_FILE + ".tmp")
    tmp.write_text(json.dumps({"pid": info.pid, "started": info.started, "ports": info.ports}))
    tmp.replace(state / PID_FILE)
    return info


def remove_pid_file(state: Path) -> None:
    """Remove the pid file if it is this process's (a second `up` must not remove the first's)."""
    info = read_pid_file(state)
    if info is not None and info.pid == os.getpid():
        (state / PID_FILE).unlink(missing_ok=True)


def read_pid_file(state: Path) -> UpInfo | None:
    try:
        data = json.loads((state / PID_FILE).read_text())
        return UpInfo(int(data["pid"]), float(data.get("started", 0.0)),
                      {str(k): int(v) for k, v in (data.get("ports") or {}).items()})
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def is_basalt_up(pid: int) -> bool:
    """Whether `pid` is a live `basalt up` (`basalt up ...` or `python -m basalt_cli up ...`):
    a pid file outlives a killed stack, and its pid may since belong to anything."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    if state == "Z":
        return False
    for i, arg in enumerate(argv[:-1]):
        if (arg == "basalt_cli" or Path(arg).name == "basalt") and argv[i + 1] == "up":
            return True
    return False


def running(state: Path) -> UpInfo | None:
    """The `basalt up` running on this state dir, if any."""
    info = read_pid_file(state)
    return info if info is not None and is_basalt_up(info.pid) else None


def down(state: Path, timeout: float = 180.0, out: Callable[[str], None] = print) -> int:
    """SIGTERM the stack's `basalt up` (it stops its services, replicas first) and wait until
    it is gone, with progress."""
    info = running(state)
    if info is None:
        stale = read_pid_file(state) is not None
        out(f"no stack running (state dir {state})" + ("; removed a stale pid file" if stale else ""))
        if stale:
            (state / PID_FILE).unlink(missing_ok=True)
        return 0
    os.kill(info.pid, signal.SIGTERM)
    t0 = time.monotonic()
    while is_basalt_up(info.pid):
        waited = time.monotonic() - t0
        if waited > timeout:
            out(f"\nbasalt up (pid {info.pid}) still running after {timeout:.0f}s; its log "
                f"folder is {state / 'logs'}; `kill -9 {info.pid}` forces it")
            return 1
        if sys.stdout.isatty():
            print(f"\r\033[Kstopping basalt up (pid {info.pid}) ... {waited:.0f}s", end="", flush=True)
        time.sleep(0.2)
    if sys.stdout.isatty():
        print("\r\033[K", end="")
    out(f"stopped basalt up (pid {info.pid}) after {time.monotonic() - t0:.1f}s")
    return 0


def state_entries(state: Path) -> list[Path]:
    """What `reset` would remove from `state` (never `models`)."""
    found = [state / name for name in STATE_ENTRIES if (state / name).exists()]
    found += [p for g in STATE_GLOBS for p in sorted(state.glob(g))]
    return sorted(set(found))


def reset(state: Path, yes: bool, ask: Callable[[str], str] = input,
          out: Callable[[str], None] = print) -> int:
    """Remove the local stack's state (NATS data, control-plane state, logs, keys, secrets),
    keeping `models` and the weight cache; refused while a stack runs on it."""
    if (info := running(state)) is not None:
        out(f"basalt reset: a stack is running on {state} (pid {info.pid}): `basalt down` first")
        return 1
    entries = state_entries(state)
    if not entries:
        out(f"nothing to reset in {state}")
        return 0
    names = ", ".join(p.name for p in entries)
    if not yes:
        try:
            answer = ask(f"remove {names} from {state} (models and the weight cache are "
                         "kept)? [y/N] ")
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            out("nothing removed")
            return 1
    for p in entries:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink(missing_ok=True)
    out(f"removed {names} from {state}; kept models and the weight cache")
    return 0


def metrics_ports(state: Path) -> dict[str, str]:
    """Each local service's metrics address, from the ready files `basalt up`'s services
    write (only while a stack runs on `state`: the files outlive a killed one)."""
    if running(state) is None:
        return {}
    out = {}
    for name in SERVICES:
        try:
            port = json.loads((state / f"{name}.ready.json").read_text()).get("metrics_port")
        except (OSError, ValueError, AttributeError):
            continue
        if port:
            out[name] = f"127.0.0.1:{port}"
    return out
