"""Secret files: written 0600 from their creation, read back stripped (does I/O)."""

from __future__ import annotations

import os
import stat
from pathlib import Path


class SecretFileError(RuntimeError):
    pass


def write_private(path: Path, text: str) -> None:
    """Write a secret to a file that is 0600 from its creation (never readable by others,
    not even between the write and a chmod); an existing file is replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_secret(path: str | Path) -> str:
    """The secret in `path`, stripped. A file that others can read is refused: a secret that
    leaked to every user of the host is not one."""
    p = Path(path)
    try:
        mode = p.stat().st_mode
        text = p.read_text().strip()
    except OSError as e:
        raise SecretFileError(f"cannot read secret file {p}: {e.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise SecretFileError(f"secret file {p} is readable by others (chmod 600 it)")
    if not text:
        raise SecretFileError(f"secret file {p} is empty")
    return text
