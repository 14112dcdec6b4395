"""`basalt up` writes its API key to a file only its user can read, from the file's creation."""

from __future__ import annotations

import stat
from pathlib import Path

from basalt_cli.up import write_private


def test_the_key_file_is_0600_and_holds_the_key(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    write_private(path, "bsk_x.y\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "bsk_x.y\n"


def test_an_existing_readable_file_is_replaced_by_a_private_one(tmp_path: Path) -> None:
    path = tmp_path / "api-key"
    path.write_text("old\n")
    path.chmod(0o644)
    write_private(path, "new\n")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text() == "new\n"
