"""`basalt bench coldstart`: where a replica's start goes, side by side in one run.

Two parts, each against this machine's own limits measured in the same run:

1. **Loaders** (`bench/coldstart_load.py`): a Llama-shaped model of random weights (≥ 2 GB by
   default, built locally) read by each loader from the warm tier (page cache) and from cold
   storage (page cache dropped with posix_fadvise(DONTNEED)), against one large sequential
   read and memcpy.
2. **Scale from zero through the router**: `basalt up` with one autoscaled deployment at zero
   replicas per variant, woken by one streamed chat request each, first token timed at the
   client. Variants:
   - `in place`: `model_path`, no node cache (how a replica started before the cache);
   - `source`: `weights` the node has never seen (fetched now, then loaded);
   - `node cache`: `weights` already in the node cache, page cache dropped (read from disk);
   - `warm tier`: `weights` in the node cache and in memory.
   Each row carries the replica's own phases (fetch, load, engine init, ready, first token).

The GPU rows come from `bench/coldstart_gpu.py` on a GPU host (see docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

from basalt import bus
from basalt.pb import deploy_pb2, events_pb2
from basalt.weights import revision_key
from basalt_tools.vllm_cpu import CPU_SETTINGS
from bench.chaos import Up

REPO = Path(__file__).resolve().parent.parent
VARIANTS = ("in place", "source", "node cache", "warm tier")


@dataclass
class StartRow:
    variant: str
    first_token_s: float  # client: request sent -> first streamed token
    # Request sent -> the control plane placed the replica (the router parks, wakes the
    # autoscaler, which scales, and the reconcile loop places).
    wake_s: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    tier: str = ""
    fetched_bytes: int = 0
    weights_bytes: int = 0
    load_bytes_per_s: float = 0.0


def _variant_dirs(root: Path, model: Path, extra_mb: int) -> dict[str, Path]:
    """One copy of the model per variant, so no variant finds another's files cached."""
    out = {}
    for i, v in enumerate(VARIANTS):
        d = root / f"model-{i}"
        if not d.exists():
            shutil.copytree(model, d)
            if extra_mb:  # bytes the runtime reads before the engine (the sim's 'weights')
                with open(d / "extra-weights.bin", "wb") as f:
                    f.writelines(os.urandom(1 << 20) for _ in range(extra_mb))
        out[v] = d
    return out


def deployment_file(path: Path, engine: str, dirs: dict[str, Path]) -> dict[str, str]:
    """A deployment per variant, each autoscaled from zero; returns variant -> deployment id."""
    deps, ids = [], {}
    args: dict[str, Any] = ({"max-model-len": 512, "max-num-seqs": 4, **CPU_SETTINGS}
                            if engine == "vllm"
                            else {"heartbeat-interval": 0.5, "sim-num-blocks": 256})
    for i, (variant, d) in enumerate(dirs.items()):
        dep_id = f"cold-{i}"
        ids[variant] = dep_id
        dep: dict[str, Any] = {"id": dep_id, "model": f"cold-{i}", "engine": engine,
                               "engine_args": args, "replicas": 0,
                               "autoscaling": {"min_replica": 0, "max_replica": 1}}
        if variant == "in place":
            dep["model_path"] = str(d)
        else:
            dep["weights"] = {"uri": str(d)}
        deps.append(dep)
    path.write_text(yaml.safe_dump({"deployments": deps}))
    return ids


async def _first_token(http_url: str, key: str, model: str, timeout: float
                       ) -> tuple[float, float]:
    """(wall clock when the request went, seconds to its first streamed token)."""
    body = {"model": model, "messages": [{"role": "user", "content": "Hello"}],
            "max_tokens": 4, "stream": True}
    sent, t0 = time.time(), time.perf_counter()
    async with httpx.AsyncClient(timeout=timeout) as client, client.stream(
            "POST", f"{http_url}/v1/chat/completions", json=body,
            headers={"Authorization": f"Bearer {key}"}) as resp:
        if resp.status_code != 200:
            raise RuntimeError(f"{model}: HTTP {resp.status_code}: {(await resp.aread())[:300]!r}")
        first = None
        async for line in resp.aiter_lines():  # read to the end: the request completes
            if first is None and line.startswith("data:") and '"content"' in line:
                first = time.perf_counter() - t0
    if first is None:
        raise RuntimeError(f"{model}: the stream ended without a token")
    return sent, first


async def _record(up: Up, dep_id: str, timeout: float = 30.0) -> events_pb2.ReplicaRecord:
    nc = await bus.connect(up.nats_url, name="bench-coldstart", auth=up.auth("admin"))
    try:
        kv = await bus.replicas_bucket(nc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for value in (await bus.kv_items(kv)).values():
                rec = events_pb2.ReplicaRecord.FromString(value)
                if rec.deployment == dep_id and rec.start.first_token_ts:
                    return rec
            await asyncio.sleep(0.2)
        raise RuntimeError(f"no replica record of {dep_id} with its first token")
    finally:
        await nc.close()


def _phases(rec: events_pb2.ReplicaRecord) -> dict[str, float]:
    from google.protobuf.json_format import MessageToDict

    from services.runtime.core.phases import StartPhases

    return StartPhases.from_dict(MessageToDict(rec.start)).durations()


def _pull(up: Up, uri: str) -> None:
    import subprocess

    subprocess.run([sys.executable, "-m", "basalt_cli", "weights", "pull", uri, "--nats-url",
                    up.nats_url, "--nats-creds", str(up.state / "secrets" / "nats" / "admin.nk")],
                   cwd=REPO, check=True, capture_output=True, timeout=600)


def _cache_tier(up: Up, uri: str, warm: bool) -> None:
    """Put a pulled revision in memory (the warm tier's read) or drop it from memory."""
    from services.coldstart.store import Store

    store = Store(up.state / "coldstart")
    m = store.manifest(revision_key(deploy_pb2.WeightsSource(uri=uri)))
    if m is None:
        raise RuntimeError(f"{uri} is not in the node cache after the pull")
    store.warm(m) if warm else store.drop(m)


def stack_rows(engine: str, workdir: Path, extra_mb: int, timeout: float) -> list[StartRow]:
    from basalt_tools.tinymodel import make_tiny_model

    model = make_tiny_model(REPO / ".basalt" / "models" / "tiny-llama")
    dirs = _variant_dirs(workdir / "models", model, extra_mb)
    for d in dirs.values():  # every variant starts with its files out of memory
        for f in d.rglob("*"):
            if f.is_file():
                fd = os.open(f, os.O_RDONLY)
                os.fsync(fd)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                os.close(fd)
    file = workdir / "deploy.yaml"
    ids = deployment_file(file, engine, dirs)
    # The warm tier off in the service: this run decides what is in memory, per variant.
    os.environ["BASALT_COLDSTART_WARM_GB"] = "0"
    up = Up(workdir / "state", deployment_file=file)
    up.start(timeout=240.0)
    rows = []
    try:
        for variant in VARIANTS:
            uri = str(dirs[variant])
            if variant in ("node cache", "warm tier"):
                _pull(up, uri)
                _cache_tier(up, uri, warm=variant == "warm tier")
            sent, first = asyncio.run(_first_token(up.http, up.key, f"cold-{VARIANTS.index(variant)}",
                                             timeout))
            rec = asyncio.run(_record(up, ids[variant]))
            s = rec.start
            rows.append(StartRow(variant, first, max(s.placed_ts - sent, 0.0), _phases(rec),
                                 s.tier, s.fetched_bytes, s.weights_bytes, s.load_bytes_per_s))
            print(f"  {variant}: first token {first:.2f}s  {rows[-1].phases}", flush=True)
    finally:
        up.stop()
        os.environ.pop("BASALT_COLDSTART_WARM_GB", None)
    return rows


def stack_table(rows: list[StartRow], engine: str) -> str:
    from services.coldstart.core.progress import human_bytes

    base = rows[0].first_token_s if rows else 0.0
    out = [f"Scale from zero to first token through the router ({engine} engine, tiny model):",
           "",
           ("| variant | first token (s) | × in place | wake→placed (s) | tier | fetched "
            "| fetch (s) | load (s) | load rate | engine init (s) | ready→first token (s) |"),
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        p = r.phases
        rate = f"{human_bytes(r.load_bytes_per_s)}/s" if r.load_bytes_per_s else "-"
        out.append(
            f"| {r.variant} | {r.first_token_s:.2f} | {r.first_token_s / base:.2f} | "
            f"{r.wake_s:.2f} | {r.tier or '-'} | {human_bytes(r.fetched_bytes)} | {p.get('fetch', 0):.2f} | "
            f"{p.get('load', 0):.2f} | {rate} | {p.get('engine_init', 0):.2f} | "
            f"{p.get('first_token', 0):.2f} |")
    return "\n".join(out)


def _args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="basalt bench coldstart", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gib", type=float, default=2.0, help="size of the loaders' model")
    p.add_argument("--engine", choices=("vllm", "sim"), default="vllm",
                   help="engine of the scale-from-zero part (sim: a simulator, seconds)")
    p.add_argument("--extra-mb", type=int, default=0,
                   help="add a file of this many random MB that the runtime reads before the "
                        "engine starts (for the sim engine, to give the tiers bytes to move)")
    p.add_argument("--skip-loaders", action="store_true")
    p.add_argument("--skip-stack", action="store_true")
    p.add_argument("--workdir", type=Path, default=None,
                   help="where the models are built (default: a temporary folder)")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--markdown", type=Path, help="write the tables to this file")
    p.add_argument("--json", type=Path, help="write every row as JSON here")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    ns = _args(argv)
    tmp = None
    if ns.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="basalt-coldstart-")
        ns.workdir = Path(tmp.name)
    ns.workdir.mkdir(parents=True, exist_ok=True)
    parts: list[str] = []
    data: dict[str, Any] = {}
    try:
        if not ns.skip_loaders:
            from bench import coldstart_load

            print(f"loaders on a {ns.gib:g} GiB model ...", flush=True)
            model = coldstart_load.build_model(ns.workdir / "loaders" / f"llama-{ns.gib:g}g",
                                               ns.gib)
            limits = coldstart_load.machine_limits(coldstart_load.shard_files(model))
            rows = coldstart_load.run(ns.workdir / "loaders", ns.gib, limits=limits)
            parts.append(coldstart_load.markdown(rows, limits))
            data["loaders"] = {"rows": rows, "limits": limits}
        if not ns.skip_stack:
            print(f"scale from zero through the router ({ns.engine}) ...", flush=True)
            srows = stack_rows(ns.engine, ns.workdir / "stack", ns.extra_mb, ns.timeout)
            parts.append(stack_table(srows, ns.engine))
            data["stack"] = [r.__dict__ for r in srows]
    finally:
        if tmp is not None:
            tmp.cleanup()
    text = "\n\n".join(parts)
    print("\n" + text)
    if ns.markdown:
        ns.markdown.write_text(text + "\n")
    if ns.json:
        ns.json.write_text(json.dumps(data, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
