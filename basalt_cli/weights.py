"""`basalt weights`: ask a node's cache for a revision and show its progress, list what each
node holds, write a directory's manifest for an HTTP server (does I/O: NATS, files)."""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.pb import deploy_pb2, weights_pb2
from basalt.weights import normal_uri, revision_key, uri_problem
from basalt.weightstream import request_fetch, weights_bucket

ADMIN_CREDS = Path(".basalt") / "secrets" / "nats" / "admin.nk"


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="basalt weights", description=__doc__)
    sub = p.add_subparsers(dest="action", required=True)
    pull = sub.add_parser("pull", help="make a revision present on a node, with a progress bar")
    pull.add_argument("what", help="a deployment file (every deployment with `weights`), a "
                      "folder, an http(s):// base URL, hf://<repo_id>, s3:// or gs:// URL")
    pull.add_argument("--revision", default="", help="the Hub's branch, tag or commit")
    pull.add_argument("--token-secret", default="", help="name of the secret holding a token")
    pull.add_argument("--node", default="local", help="the node whose cache fetches it")
    pull.add_argument("--timeout", type=float, default=3600.0)
    sub.add_parser("ls", help="what each node's cache holds")
    man = sub.add_parser("manifest", help="write DIR/basalt-manifest.json (files, sizes, "
                         "sha256) so any HTTP server can serve DIR as a weights source")
    man.add_argument("dir", type=Path)
    for q in (pull, sub.choices["ls"]):
        q.add_argument("--nats-url", default="nats://127.0.0.1:4222")
        q.add_argument("--nats-creds", default=str(ADMIN_CREDS),
                       help="the admin role's NATS seed file (default: `basalt up`'s)")
        q.add_argument("--nats-tls-ca", default="")
    return p.parse_args(argv)


def sources_of(what: str, revision: str, token_secret: str) -> list[deploy_pb2.WeightsSource]:
    """The sources `basalt weights pull WHAT` means."""
    path = Path(what)
    if path.is_file() and path.suffix in (".yaml", ".yml"):
        from basalt import deployfile

        parsed = deployfile.load(path, base_dir=path.parent)
        return [d.weights.to_proto() for d in parsed.deployments if d.weights is not None]
    if problem := uri_problem(what):
        raise SystemExit(f"basalt weights: {what!r}: {problem}")
    uri = what if "://" in what else normal_uri(what)
    return [deploy_pb2.WeightsSource(uri=uri, revision=revision, token_secret=token_secret)]


def bar(done: int, total: int, rate: float, width: int = 30) -> str:
    """`[=====>    ]  1.2 GB / 2.0 GB  350.0 MB/s  ETA 2s`."""
    from services.coldstart.core.progress import human_bytes

    share = done / total if total else 0.0
    filled = int(share * width)
    eta = f"ETA {((total - done) / rate):.0f}s" if rate > 0 and total > done else ""
    return (f"[{'=' * filled}{'>' if filled < width else ''}{' ' * max(width - filled - 1, 0)}]"
            f" {human_bytes(done)} / {human_bytes(total)}  {human_bytes(rate)}/s  {eta}").rstrip()


async def _pull(ns: argparse.Namespace) -> int:
    sources = sources_of(ns.what, ns.revision, ns.token_secret)
    if not sources:
        print("basalt weights: nothing to pull (no deployment in the file has `weights`)",
              file=sys.stderr)
        return 2
    creds = ns.nats_creds if Path(ns.nats_creds).exists() else ""
    nc = await bus.connect(ns.nats_url, name="basalt-weights", auth=bus.NatsAuth(creds, ns.nats_tls_ca))
    try:
        kv = await weights_bucket(nc)
        for source in sources:
            if (rc := await _pull_one(nc, kv, ns.node, source, ns.timeout)) != 0:
                return rc
        return 0
    finally:
        await nc.close()


async def _pull_one(nc: Client, kv: KeyValue, node: str, source: deploy_pb2.WeightsSource,
                    timeout: float) -> int:
    key = revision_key(source)
    done = asyncio.get_running_loop().create_future()
    started = time.monotonic()

    async def on_progress(msg: Msg) -> None:
        p = weights_pb2.WeightsProgress.FromString(msg.data)
        if p.key != key:
            return
        print(f"\r\033[K{bar(p.done_bytes, p.total_bytes, p.bytes_per_s)}", end="", flush=True)
        if p.state in (weights_pb2.WEIGHTS_STATE_PRESENT, weights_pb2.WEIGHTS_STATE_FAILED) \
                and not done.done():
            done.set_result(p)

    sub = await nc.subscribe(subjects.weights_progress(node), cb=on_progress)
    try:
        print(f"{source.uri}{'@' + source.revision if source.revision else ''} -> node {node} "
              f"(revision {key})", flush=True)
        await request_fetch(nc, node, source)
        try:
            p = await asyncio.wait_for(done, timeout)
        except TimeoutError:
            rec = await kv.get(node) if node else None
            alive = rec is not None and rec.value and time.time() - \
                weights_pb2.NodeWeights.FromString(rec.value).heartbeat_ts < subjects.WEIGHTS_STALE_S
            print(f"\nbasalt weights: no answer in {timeout:.0f}s"
                  + ("" if alive else f" (no coldstart service on node {node}?)"), file=sys.stderr)
            return 1
        took = time.monotonic() - started
        if p.state == weights_pb2.WEIGHTS_STATE_FAILED:
            print(f"\nbasalt weights: failed: {p.error}", file=sys.stderr)
            return 1
        print(f"\npresent in {took:.1f}s at {p.path}", flush=True)
        return 0
    finally:
        await sub.unsubscribe()


async def _ls(ns: argparse.Namespace) -> int:
    from services.coldstart.core.progress import human_bytes

    creds = ns.nats_creds if Path(ns.nats_creds).exists() else ""
    nc = await bus.connect(ns.nats_url, name="basalt-weights", auth=bus.NatsAuth(creds, ns.nats_tls_ca))
    try:
        kv = await weights_bucket(nc)
        rows = [("NODE", "REVISION", "STATE", "SIZE", "WARM", "SOURCE")]
        for node, value in sorted((await bus.kv_items(kv)).items()):
            rec = weights_pb2.NodeWeights.FromString(value)
            for r in rec.revisions:
                state = weights_pb2.WeightsState.Name(r.state).removeprefix("WEIGHTS_STATE_").lower()
                warm = f"{100 * r.warm_bytes / r.total_bytes:.0f}%" if r.total_bytes else "-"
                rows.append((node, r.key, state + (f": {r.error[:60]}" if r.error else ""),
                             human_bytes(r.total_bytes), warm, r.source.uri))
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
        return 0
    finally:
        await nc.close()


def main(argv: list[str]) -> int:
    ns = _args(argv)
    if ns.action == "manifest":
        from services.coldstart.sources import write_manifest

        print(write_manifest(ns.dir))
        return 0
    try:
        return asyncio.run(_pull(ns) if ns.action == "pull" else _ls(ns))
    except (bus.NatsRefused, bus.InsecureNats) as e:
        print(f"basalt weights: {e}", file=sys.stderr)
        return 2
