"""The `basalt` command: runs services, builds the tiny model, runs benchmarks (does I/O)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

USAGE = """basalt <command> [args]

commands:
  runtime            run one replica (basalt runtime --help)
  router             run the router (basalt router --help)
  keys create        make an API key (stored hashed in NATS KV; shown once)
  make-tiny-model    build the tiny test model (random weights, local tokenizer) into DIR
  bench              run a benchmark: basalt bench {runtime,index,routing} --help
  up                 start the local stack (basalt up --help)
  mcm                run the control plane (basalt mcm --help)
  deploy FILE        create or update the deployments in a file
  status             deployments and replicas, as tables
  scale DEP N        set a deployment's desired replicas
  promote DEP        point an environment (default production) at a deployment
  logs SERVICE       show a service's or a replica's log (-f to follow)
"""


def _make_tiny_model(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="basalt make-tiny-model")
    parser.add_argument("dir", type=Path, help="where to write the model")
    ns = parser.parse_args(args)
    from basalt_tools.tinymodel import make_tiny_model

    print(make_tiny_model(ns.dir))
    return 0


def _keys(args: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="basalt keys")
    sub = parser.add_subparsers(dest="action", required=True)
    create = sub.add_parser("create", help="make an API key; prints it once")
    create.add_argument("--name", default="default", help="a label for the key")
    create.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    ns = parser.parse_args(args)
    import asyncio

    from basalt import apikeys, bus

    async def go() -> str:
        nc = await bus.connect(ns.nats_url, name="basalt-cli")
        try:
            return await apikeys.create(nc, ns.name)
        finally:
            await nc.close()

    print(asyncio.run(go()))
    return 0


def _bench(args: list[str]) -> int:
    if not args or args[0] in ("-h", "--help"):
        print("usage: basalt bench {runtime,index,routing} [--help]")
        return 0 if args else 2
    name, rest = args[0], args[1:]
    if name == "runtime":
        from bench.runtime import main as bench_main
    elif name == "index":
        from bench.index_micro import main as bench_main
    elif name == "routing":
        from bench.routing import main as bench_main
    else:
        print(f"basalt bench: unknown benchmark {name!r}", file=sys.stderr)
        return 2
    return int(bench_main(rest) or 0)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if args else 2
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
    if cmd in ("deploy", "status", "scale", "promote", "logs"):
        from basalt_cli.ctl import main as ctl_main

        return ctl_main(cmd, rest)
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
