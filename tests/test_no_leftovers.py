"""The suite's end-of-run leak check finds a process the suite started and still running."""

from __future__ import annotations

import os
import subprocess
import sys

from tests.conftest import SESSION_MARK, survivors


def test_a_process_started_by_the_suite_is_found_until_it_ends() -> None:
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        assert proc.pid in survivors(os.environ[SESSION_MARK], os.getpid())
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in survivors(os.environ[SESSION_MARK], os.getpid())


def test_a_process_of_another_session_is_not_ours() -> None:
    env = {**os.environ, SESSION_MARK: "another-session"}
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], env=env)
    try:
        assert proc.pid not in survivors(os.environ[SESSION_MARK], os.getpid())
    finally:
        proc.kill()
        proc.wait()
