"""Debian's `chromium`, for the dashboard's real-browser test: found, or installed when missing
(does I/O: apt-get).

`make test` starts `python -m basalt_tools.chromium` in the background while it lints and
runs the suite, so the download overlaps other work on a fresh machine; the test's own
`ensure()` takes the same file lock, so it waits for that install rather than racing it (two
apt-gets would fight over dpkg's lock), and installs itself when nothing else did.
Idempotent: with chromium present it does nothing.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PACKAGE = "chromium"
LOCK = Path(os.environ.get("BASALT_CHROMIUM_LOCK", "/tmp/basalt-chromium-install.lock"))


def found() -> str | None:
    """The browser's path: $BASALT_CHROMIUM, else the first of NAMES on PATH."""
    explicit = os.environ.get("BASALT_CHROMIUM")
    if explicit:
        return explicit
    return next((p for n in NAMES if (p := shutil.which(n))), None)


def _apt(prefix: list[str], *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run([*prefix, "apt-get", *args], capture_output=True, text=True,
                          env=env, timeout=900, check=False)


def _install() -> str:
    if shutil.which("apt-get") is None:
        return "no apt-get on this machine: install chromium (or set BASALT_CHROMIUM)"
    if os.geteuid() == 0:
        prefix: list[str] = []
    elif shutil.which("sudo") is not None:
        prefix = ["sudo", "-n"]
    else:
        return "not root and no sudo: install chromium (or set BASALT_CHROMIUM)"
    done = _apt(prefix, "install", "-y", "--no-install-recommends", PACKAGE)
    if done.returncode != 0:  # stale package lists: update once and try again
        _apt(prefix, "update")
        done = _apt(prefix, "install", "-y", "--no-install-recommends", PACKAGE)
    if done.returncode != 0:
        return f"apt-get install {PACKAGE} failed: {done.stderr.strip()[-300:]}"
    return ""


def ensure(wait_s: float = 900.0) -> tuple[str | None, str]:
    """(the browser's path, why not when None): found, or installed under the lock (waiting
    up to `wait_s` for an install another process holds)."""
    if (path := found()) is not None:
        return path, ""
    with open(LOCK, "a") as lock:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    return None, f"another chromium install held {LOCK} for {wait_s:.0f}s"
                time.sleep(0.5)
        try:
            if (path := found()) is not None:  # the other process installed it
                return path, ""
            why = _install()
            return found(), why or "not found after install"
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def main() -> int:
    path, why = ensure()
    print(path or f"chromium unavailable: {why}", file=sys.stderr)
    return 0  # the test says why it skips; a missing browser must not fail the build


if __name__ == "__main__":
    sys.exit(main())
