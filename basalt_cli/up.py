"""`basalt up`: the local stack in one command — nats-server, the node's weight cache
(coldstart), mcm, router, autoscaler, the default deployment — until Ctrl-C, which stops everything (does I/O: processes, HTTP, NATS)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from basalt import bus
from basalt.client import BasaltError, Client
from basalt.secretfiles import write_private
from basalt_cli import stack as local
from basalt_cli.views import STOPPED_STATES, health_text
from basalt_tools.natsserver import NatsCluster, NatsServer
from basalt_tools.tlsfiles import make_tls_files

REPO = Path(__file__).resolve().parent.parent
# How many nodes hold each KV bucket and the scale stream (read where they are created).
NATS_REPLICAS_ENV = "BASALT_NATS_REPLICAS"
READY_FILES = ("coldstart", "mcm", "router", "autoscaler")
DEPLOY = {"vllm": REPO / "deploy" / "local" / "tiny.yaml",
          "sim": REPO / "deploy" / "local" / "tiny-sim.yaml"}


@dataclass
class Stack:
    state: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    nats: NatsServer | NatsCluster | None = None

    @property
    def logs(self) -> Path:
        return self.state / "logs"

    def start(self, name: str, args: list[str]) -> None:
        self.logs.mkdir(parents=True, exist_ok=True)
        with open(self.logs / f"{name}.log", "ab") as out:  # the child keeps its own fd
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", *args], cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"}, start_new_session=True,
            )

    def wait_file(self, name: str, path: Path, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while not path.exists():
            proc = self.procs[name]
            if proc.poll() is not None:
                raise SystemExit(f"{name} exited ({proc.returncode}); see {self.logs / name}.log")
            if time.monotonic() > deadline:
                raise SystemExit(f"{name} did not start in {timeout:.0f}s; see {self.logs / name}.log")
            time.sleep(0.1)
        return json.loads(path.read_text())

    def stop(self) -> None:
        # autoscaler, router, mcm (it stops replicas), then the weight cache
        for name in reversed(list(self.procs)):
            proc = self.procs[name]
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        if self.nats:
            self.nats.stop()


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="basalt up", description=__doc__)
    p.add_argument("--engine", choices=sorted(DEPLOY), default="vllm",
                   help="vllm (the tiny model on vLLM's CPU build) or sim (the simulator)")
    p.add_argument("--deployment-file", type=Path, help="deploy this file instead of the default")
    p.add_argument("--state-dir", type=Path, default=REPO / ".basalt", help="logs and NATS data")
    p.add_argument("--nats-port", type=int, default=4222,
                   help="NATS client port (of node 0 with --nats-cluster)")
    p.add_argument("--nats-cluster", type=int, default=1, metavar="N",
                   help="run N nats-server nodes as one JetStream cluster on loopback (their "
                        "stores in <state-dir>/nats/node-<i>); with N >= 3 the buckets and the "
                        "scale stream are replicated on 3 nodes (default 1: one server)")
    p.add_argument("--http-port", type=int, default=8000, help="the router's OpenAI HTTP port")
    p.add_argument("--grpc-port", type=int, default=8001, help="the router's KServe v2 gRPC port")
    p.add_argument("--mcm-port", type=int, default=8081, help="the deployments API port")
    p.add_argument("--router-metrics-port", type=int, default=None,
                   help="the router's Prometheus port (default: the router's, 9101; 0 = any free "
                        "port: the banner and `basalt status` print it); the other services "
                        "take free ports")
    p.add_argument("--ready-timeout", type=float, default=600.0)
    p.add_argument("--nats-tls", action="store_true",
                   help="TLS on NATS too (a private CA in <state-dir>/secrets/tls; off by "
                        "default: everything here is on loopback)")
    return p.parse_args(argv)


def _progress(msg: str) -> None:
    print(f"\r\033[K{msg}", end="", flush=True)


def _wait_ready(client: Client, model: str, deployment_id: str, timeout: float) -> None:
    """Poll the deployment's view until a replica is READY, with progress; stop at once with
    the control plane's reason when the deployment failed or cannot be placed (waiting would
    not help: the log of the failed replica, or the cluster list, says what to fix)."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        try:
            dep = client.deployment(model, deployment_id)
        except BasaltError as e:  # the control plane busy or restarting: poll again
            _progress(f"waiting for {deployment_id}: {e} ({time.monotonic() - t0:.0f}s)")
            time.sleep(1.0)
            continue
        if dep.active_replica_count >= 1:
            _progress(f"replica ready after {time.monotonic() - t0:.0f}s\n")
            return
        if dep.health.state in STOPPED_STATES:
            raise SystemExit(f"\n{deployment_id}: {health_text(dep)}\n(`basalt logs mcm` and "
                             "`basalt status` say more; fix the deployment file and run again)")
        shown = ", ".join(r.state for r in dep.replicas) or dep.health.state or "starting"
        if dep.health.reason:
            shown += f" ({dep.health.reason})"
        _progress(f"waiting for {deployment_id}: {shown} ({time.monotonic() - t0:.0f}s)")
        time.sleep(1.0)
    raise SystemExit(f"\nno replica of {deployment_id} became ready in {timeout:.0f}s")


async def _make_keys(nats_url: str, auth: bus.NatsAuth) -> tuple[str, str]:
    """A new inference key and management key. Earlier runs' keys are left valid; revoke
    them with `basalt keys list / revoke`."""
    from basalt import apikeys

    nc = await bus.connect(nats_url, name="basalt-up", auth=auth)
    try:
        return (await apikeys.create(nc, "basalt-up", apikeys.INFERENCE),
                await apikeys.create(nc, "basalt-up", apikeys.MANAGEMENT))
    finally:
        await nc.close()


def _stop_on_sigterm(*_: object) -> None:
    """`basalt down` (SIGTERM) stops the stack as Ctrl-C does, at any point of the start."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the stop itself is not interrupted
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise KeyboardInterrupt


def main(argv: list[str]) -> int:
    ns = _args(argv)
    from basalt import deployfile
    from basalt.weights import local_path
    from basalt_cli.deploying import apply
    from basalt_tools.tinymodel import make_tiny_model

    state = ns.state_dir.resolve()
    if (other := local.running(state)) is not None:
        print(f"basalt up: a stack is running on {state} already (pid {other.pid}); "
              "`basalt down` stops it", file=sys.stderr)
        return 1
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    local.write_pid_file(state, {"nats": ns.nats_port, "http": ns.http_port,
                                 "grpc": ns.grpc_port, "mcm": ns.mcm_port})
    stack, rc = Stack(state), 0
    try:
        print("building the tiny model if missing ...", flush=True)
        make_tiny_model(state / "models" / "tiny-llama")
        secrets_dir = state / "secrets"
        tls = make_tls_files(secrets_dir / "tls") if ns.nats_tls else None
        if ns.nats_cluster < 1:
            raise SystemExit("--nats-cluster must be at least 1")
        if ns.nats_cluster == 1:
            stack.nats = NatsServer(store_dir=state / "nats", port=ns.nats_port,
                                    log_file=state / "logs" / "nats.log",
                                    creds_dir=secrets_dir / "nats", tls=tls)
        else:
            stack.nats = NatsCluster(store_dir=state / "nats", size=ns.nats_cluster,
                                     port=ns.nats_port, log_dir=state / "logs",
                                     creds_dir=secrets_dir / "nats", tls=tls)
            # Buckets and the scale stream are created by whoever opens them first (this
            # process for the keys, mcm, router, runtimes): all of them read this.
            os.environ[NATS_REPLICAS_ENV] = str(min(ns.nats_cluster, 3))
        tls_args = ["--nats-tls-ca", tls.ca_file] if tls else []
        (state / "logs").mkdir(parents=True, exist_ok=True)
        stack.nats.start()
        url = stack.nats.url
        creds = stack.nats.creds
        replica_secret = secrets_dir / "replica-secret"
        if not replica_secret.exists():
            write_private(replica_secret, secrets.token_hex(32) + "\n")
        path = ns.deployment_file or DEPLOY[ns.engine]
        parsed = deployfile.load(path, base_dir=path.parent)
        # The control plane starts code only from these: the state dir's models and what the
        # file this command deploys names (the operator chose it).
        roots = sorted({str(state / "models"), *(
            p for d in parsed.deployments
            for p in (d.model_path, *(x.path for x in d.loras),
                      local_path(d.weights.uri) if d.weights else "")
            if p)})
        _remove_ready_files(state)
        # The node's weight cache first: the control plane asks it for the weights before it
        # starts a replica (node "local" = the local provider's cluster).
        stack.start("coldstart", ["services.coldstart", "--nats-url", url, "--node", "local",
                                  "--cache-dir", str(state / "coldstart"),
                                  "--nats-creds", str(creds("coldstart")),
                                  "--replica-secret-file", str(replica_secret),
                                  "--secrets-dir", str(secrets_dir / "weights"), *tls_args,
                                  "--ready-file", str(state / "coldstart.ready.json")])
        stack.start("mcm", ["services.mcm", "--nats-url", url, "--http-port", str(ns.mcm_port),
                            "--provider", "local", "--state-dir", str(state / "mcm"),
                            "--stop-replicas-on-exit", "--auth",
                            "--nats-creds", str(creds("mcm")),
                            "--runtime-nats-creds", str(creds("runtime")),
                            "--replica-secret-file", str(replica_secret), *tls_args,
                            *[a for r in roots for a in ("--model-roots", r)],
                            "--ready-file", str(state / "mcm.ready.json")])
        stack.start("router", ["services.router", "--nats-url", url, "--auth",
                               "--http-port", str(ns.http_port), "--grpc-port", str(ns.grpc_port),
                               *([] if ns.router_metrics_port is None
                                 else ["--metrics-port", str(ns.router_metrics_port)]),
                               "--nats-creds", str(creds("router")),
                               "--replica-secret-file", str(replica_secret), *tls_args,
                               "--ready-file", str(state / "router.ready.json")])
        stack.start("autoscaler", ["services.autoscaler", "--nats-url", url,
                                   "--nats-creds", str(creds("autoscaler")),
                                   "--replica-secret-file", str(replica_secret), *tls_args,
                                   "--ready-file", str(state / "autoscaler.ready.json")])
        metrics = {name: stack.wait_file(name, state / f"{name}.ready.json", 60).get("metrics_port")
                   for name in READY_FILES}
        admin = bus.NatsAuth(str(creds("admin")), tls.ca_file if tls else "")
        key, management_key = asyncio.run(_make_keys(url, admin))
        # Readable by this user only: the inference key for clients, the management key for
        # `basalt status/scale/deploy/...`.
        write_private(state / "api-key", key + "\n")
        write_private(state / "management-key", management_key + "\n")
        with Client(f"http://127.0.0.1:{ns.mcm_port}", management_key) as client:
            apply(client, parsed)
            dep = parsed.deployments[0]
            print(f"deployed {dep.id} ({dep.engine}); logs in {stack.logs}", flush=True)
            if dep.to_record().desired_replicas == 0:  # autoscaled from zero: nothing to wait for
                print(f"{dep.id} is at 0 replicas: the first request wakes it (it is parked "
                      "meanwhile); `basalt status` shows the autoscaler's decisions", flush=True)
            else:
                _wait_ready(client, dep.model, dep.id, ns.ready_timeout)
        _banner(ns, key, dep.model, metrics)
        _wait_for_ctrl_c()
    except KeyboardInterrupt:
        pass
    except SystemExit as e:  # a service or the deployment failed: say why before stopping
        print(f"\n{e.code}" if isinstance(e.code, str) else "", file=sys.stderr, flush=True)
        rc = 1
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        print("\nstopping ...", flush=True)
        stack.stop()
        _remove_ready_files(state)
        local.remove_pid_file(state)
        print("stopped; nothing left running.", flush=True)
    return rc


def _remove_ready_files(state: Path) -> None:
    """The services' ready files say "serving, on these ports": gone with the services."""
    for name in READY_FILES:
        (state / f"{name}.ready.json").unlink(missing_ok=True)


def _banner(ns: argparse.Namespace, key: str, model: str, metrics: dict[str, int | None]) -> None:
    base = f"http://127.0.0.1:{ns.http_port}/v1"
    ports = "  ".join(f"{name} :{port}" for name, port in metrics.items() if port)
    body = json.dumps({"model": model, "messages": [{"role": "user", "content": "Hello!"}],
                       "max_tokens": 16})
    print(f"""
basalt is up.
  OpenAI base URL:  {base}
  KServe v2 gRPC:   127.0.0.1:{ns.grpc_port}
  Deployments API:  http://127.0.0.1:{ns.mcm_port}/v1   (OpenAPI: /docs)
  Dashboard:        http://127.0.0.1:{ns.mcm_port}/dashboard   (sign in with the management key)
  API key:          {key}   (inference; the management key is in {ns.state_dir.resolve() / "management-key"})
  Metrics:          {ports}   (Prometheus; replicas': `basalt status`)

Try it:
  curl -s {base}/chat/completions -H "Authorization: Bearer {key}" -H "Content-Type: application/json" -d '{body}'

Ctrl-C stops everything (so does `basalt down` from another terminal).""", flush=True)


def _wait_for_ctrl_c() -> None:
    """Until Ctrl-C or `basalt down` (SIGTERM): both raise KeyboardInterrupt here."""
    while True:
        time.sleep(0.2)
