"""The `basalt` command: runs services, builds the tiny model, runs benchmarks (does I/O)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# `basalt up`'s admin NATS credentials (key administration), from the repository root.
ADMIN_CREDS = Path(".basalt") / "secrets" / "nats" / "admin.nk"

# The commands basalt_cli.ctl runs (named here so that `basalt --help` imports no httpx).
CTL_COMMANDS = ("deploy", "status", "scale", "wake", "promote", "activate", "deactivate",
                "delete", "logs")
USAGE = """basalt <command> [args]

commands:
  runtime            run one replica (basalt runtime --help)
  router             run the router (basalt router --help)
  autoscaler         run the autoscaler (basalt autoscaler --help)
  coldstart          run one node's weight cache (basalt coldstart --help)
  weights pull|ls|manifest   fetch a revision into a node's cache (progress bar); list caches
  keys create|list|revoke   API keys (stored hashed in NATS KV; shown once)
  make-tiny-model    build the tiny test model (random weights, local tokenizer) into DIR
  bench              run a benchmark: basalt bench {runtime,index,routing,chaos,autoscale,coldstart,serve,router} --help
  up                 start the local stack (basalt up --help)
  mcm                run the control plane (basalt mcm --help)
  down               stop the `basalt up` running in another terminal
  reset              remove the local stack's state (keeps the models, the weight cache and the virtualenv)
  deploy FILE        create or update the deployments in a file (--wait: until they serve it)
  status             deployments (with health), replicas and metrics ports, as tables
  scale DEP N        set a deployment's desired replicas
  wake DEP           wake a deployment scaled to zero
  promote DEP        point an environment (default production) at a deployment
  activate DEP       serve again (a FAILED deployment: clear the failure and retry)
  deactivate DEP     stop a deployment's replicas; it keeps its spec
  delete MODEL|DEP   delete a model with all its deployments, or one deployment
  logs SERVICE       show a service's or a replica's log (-f to follow)

basalt --version     the installed version
"""


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("basalt")
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown (not installed: `make setup`)"


def _stack(cmd: str, args: list[str]) -> int:
    """`basalt down` and `basalt reset`: the local stack from outside it."""
    from basalt_cli import ctl, stack

    parser = argparse.ArgumentParser(prog=f"basalt {cmd}", description=(
        "stop the `basalt up` running on the state dir (SIGTERM; it stops every service)"
        if cmd == "down" else
        "remove the local stack's state: NATS data, control-plane state, logs, keys, secrets, "
        "the weight cache; keeps <state-dir>/models and the virtualenv"))
    ctl.state_dir_arg(parser)
    if cmd == "down":
        parser.add_argument("--timeout", type=float, default=180.0,
                            help="give up waiting after this many seconds")
    else:
        parser.add_argument("-y", "--yes", action="store_true", help="do not ask")
    ns = parser.parse_args(args)
    state = ns.state_dir.resolve()
    if cmd == "down":
        return stack.down(state, ns.timeout)
    return stack.reset(state, ns.yes)


def _make_tiny_model(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="basalt make-tiny-model")
    parser.add_argument("dir", type=Path, help="where to write the model")
    ns = parser.parse_args(args)
    from basalt_tools.tinymodel import make_tiny_model

    print(make_tiny_model(ns.dir))
    return 0


def _duration_s(text: str) -> float:
    """'90s', '30m', '12h', '30d' (or plain seconds) as seconds."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        if text and text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (e.g. 90s, 30m, 12h, 30d)") from None


def _keys(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="basalt keys", description=(
        "API keys: inference keys for the router, management keys for the deployments API. "
        "Needs the admin role's NATS credentials (the only role that writes keys)."))
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make an API key; prints it once")
    create.add_argument("--name", default="default", help="a label for the key")
    create.add_argument("--scope", choices=("inference", "management"), default="inference",
                        help="inference (the router) or management (the deployments API)")
    create.add_argument("--model", action="append", default=[], dest="models",
                        help="limit the key to this model (repeatable; default: every model)")
    create.add_argument("--expires-in", type=_duration_s, default=0.0,
                        help="refuse the key after this long (e.g. 30d; default: never)")
    create.add_argument("--rate", type=float, default=0.0,
                        help="inference: requests per second (burst: 2 s worth); 0 = unlimited")
    create.add_argument("--concurrency", type=int, default=0,
                        help="inference: requests in flight at once; 0 = unlimited")
    sub.add_parser("list", help="every key: id, name, scope, models, expiry, limits (no secrets)")
    revoke = sub.add_parser("revoke", help="delete a key; refused everywhere within 5 s")
    revoke.add_argument("key_id", help="the id after bsk_ (as `basalt keys list` shows)")
    for p in (create, *sub.choices.values()):
        if not any(a.dest == "nats_url" for a in p._actions):
            p.add_argument("--nats-url", default="nats://127.0.0.1:4222")
            p.add_argument("--nats-creds", default=str(ADMIN_CREDS),
                           help="the admin role's NATS seed file (default: `basalt up`'s)")
            p.add_argument("--nats-tls-ca", default="",
                           help="CA of the NATS server's certificate (TLS)")
    ns = parser.parse_args(args)
    import asyncio
    import time

    from basalt import apikeys, bus

    creds = ns.nats_creds if Path(ns.nats_creds).exists() else ""

    async def go() -> int:
        nc = await bus.connect(ns.nats_url, name="basalt-cli", auth=bus.NatsAuth(creds, ns.nats_tls_ca))
        try:
            if ns.action == "create":
                if ns.rate < 0 or ns.concurrency < 0 or ns.expires_in < 0:
                    print("basalt keys: --rate, --concurrency and --expires-in are >= 0",
                          file=sys.stderr)
                    return 2
                print(await apikeys.create(
                    nc, ns.name, apikeys.SCOPES[ns.scope], models=ns.models,
                    expires_ts=time.time() + ns.expires_in if ns.expires_in else 0.0,
                    rate_per_s=ns.rate, max_concurrency=ns.concurrency))
            elif ns.action == "list":
                print(_key_table(await apikeys.list_keys(nc), time.time()))
            elif not await apikeys.revoke(nc, ns.key_id):
                print(f"basalt keys: no key {ns.key_id!r}", file=sys.stderr)
                return 1
            else:
                print(f"revoked {ns.key_id}")
            return 0
        finally:
            await nc.close()

    return asyncio.run(go())


def _key_table(records: list, now: float) -> str:
    from basalt.pb import deploy_pb2

    rows = [("ID", "NAME", "SCOPE", "MODELS", "EXPIRES", "RATE/S", "CONCURRENCY")]
    for r in records:
        scope = deploy_pb2.KeyScope.Name(r.scope).removeprefix("KEY_SCOPE_").lower()
        expires = ("never" if not r.expires_ts else "expired" if r.expires_ts <= now
                   else f"in {(r.expires_ts - now) / 86400:.1f}d")
        rows.append((r.key_id, r.name, scope, ",".join(r.models) or "*", expires,
                     f"{r.rate_per_s:g}" if r.rate_per_s else "-",
                     str(r.max_concurrency) if r.max_concurrency else "-"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip()
                     for row in rows)


def _bench(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print("usage: basalt bench {runtime,index,routing,chaos,autoscale,coldstart,serve,router} [--help]")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "runtime":
        from bench.runtime import main as bench_main
    elif name == "index":
        from bench.index_micro import main as bench_main
    elif name == "routing":
        from bench.routing import main as bench_main
    elif name == "chaos":
        from bench.chaos import main as bench_main
    elif name == "autoscale":
        from bench.autoscale import main as bench_main
    elif name == "coldstart":
        from bench.coldstart import main as bench_main
    elif name == "serve":
        from bench.serve import main as bench_main
    elif name == "router":
        from bench.router_load import main as bench_main
    else:
        print(f"basalt bench: unknown benchmark {name!r}", file=sys.stderr)
        return 2
    return int(bench_main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
    if args[0] in ("--version", "-V"):
        print(f"basalt {_version()}")
        return 0
    cmd, rest = args[0], args[1:]
    if cmd == "runtime":
        from services.runtime.main import main as runtime_main

        return runtime_main(rest)
    if cmd == "router":
        from services.router.main import main as router_main

        return router_main(rest)
    if cmd == "keys":
        return _keys(rest)
    if cmd == "make-tiny-model":
        return _make_tiny_model(rest)
    if cmd == "bench":
        return _bench(rest)
    if cmd == "autoscaler":
        from services.autoscaler.main import main as autoscaler_main

        return autoscaler_main(rest)
    if cmd == "coldstart":
        from services.coldstart.main import main as coldstart_main

        return coldstart_main(rest)
    if cmd == "weights":
        from basalt_cli.weights import main as weights_main

        return weights_main(rest)
    if cmd in CTL_COMMANDS:
        from basalt_cli.ctl import main as ctl_main

        return ctl_main(cmd, rest)
    if cmd in ("down", "reset"):
        return _stack(cmd, rest)
    if cmd == "mcm":
        from services.mcm.main import main as mcm_main

        return mcm_main(rest)
    if cmd == "up":
        from basalt_cli.up import main as up_main

        return up_main(rest)
    print(f"basalt: unknown command {cmd!r}\n\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
