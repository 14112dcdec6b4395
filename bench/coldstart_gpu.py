"""Cold-start weight-load benchmark for one GPU host: safetensors vs basalt's pinned-ring loader
(does file and device I/O: builds a random model, drops it from the page cache, loads it).

UNVERIFIED until run on a GPU host: it was written and its CPU paths tested on a machine without
a GPU; no CUDA line of it has executed yet. Run from the repository root, needing only torch with
CUDA and numpy (safetensors optional; no vLLM, no network):

    python bench/coldstart_gpu.py --gib 4 --out DIR

It measures, in one run: the machine's limits (one sequential read with the page cache dropped,
a 1 GiB memcpy, a pinned host-to-device copy), `safetensors.torch.load_file(device="cuda")` warm,
and basalt's loader warm and cold: reader threads `preadv` fixed-size chunks of each shard into a
bounded ring of pinned host buffers while the main thread issues non_blocking copies from each
filled buffer into the preallocated device tensors on a side stream; a buffer is refilled only
after the event recorded behind its copies has completed. Writes DIR/coldstart_gpu.json and
DIR/coldstart_gpu.md. Self-contained on purpose (the GPU host may get only this file).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import mmap
import os
import platform
import sys
import time
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

try:
    import torch
except ImportError:  # the script says what it lacks in main(); importing stays safe
    torch = None  # type: ignore[assignment]

MARK = "coldstart_build.json"
INDEX = "model.safetensors.index.json"


@dataclass(slots=True, frozen=True)
class Piece:
    """Bytes [buf_lo, buf_lo + n) of a chunk's buffer go to bytes [dst_lo, dst_lo + n) of `name`."""
    name: str
    dst_lo: int
    buf_lo: int
    n: int


@dataclass(slots=True)
class Chunk:
    file: int
    offset: int
    length: int
    pieces: list[Piece] = field(default_factory=list)


# ---- pure planning ----------------------------------------------------------------------------

def llama_specs(gib: float) -> tuple[dict[str, Any], list[tuple[str, tuple[int, ...]]]]:
    """HF Llama config (TinyLlama widths) with enough layers for `gib` of bf16, and its tensors."""
    h, i, v, heads, kv = (2048, 5632, 32000, 32, 4) if gib >= 1.0 else (512, 1408, 8000, 8, 2)
    kvd = kv * h // heads
    per_layer = 2 * (2 * h * h + 2 * h * kvd + 3 * h * i + 2 * h)
    layers = max(1, math.ceil((gib * (1 << 30) - 2 * (2 * v * h + h)) / per_layer))
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": h,
           "intermediate_size": i, "num_hidden_layers": layers, "num_attention_heads": heads,
           "num_key_value_heads": kv, "vocab_size": v, "torch_dtype": "bfloat16"}
    specs: list[tuple[str, tuple[int, ...]]] = [("model.embed_tokens.weight", (v, h))]
    for n in range(layers):
        p = f"model.layers.{n}."
        specs += [(p + "input_layernorm.weight", (h,)), (p + "self_attn.q_proj.weight", (h, h)),
                  (p + "self_attn.k_proj.weight", (kvd, h)),
                  (p + "self_attn.v_proj.weight", (kvd, h)),
                  (p + "self_attn.o_proj.weight", (h, h)),
                  (p + "post_attention_layernorm.weight", (h,)),
                  (p + "mlp.gate_proj.weight", (i, h)), (p + "mlp.up_proj.weight", (i, h)),
                  (p + "mlp.down_proj.weight", (h, i))]
    specs += [("model.norm.weight", (h,)), ("lm_head.weight", (v, h))]
    return cfg, specs


def plan_chunks(shards: list[tuple[int, list[tuple[str, int, int]]]], chunk: int) -> list[Chunk]:
    """Cut each shard's data (data offset, [(name, begin, end)] by begin) into reads of at most
    `chunk` bytes, each with the pieces of tensors it carries."""
    chunks: list[Chunk] = []
    for file, (data_off, tensors) in enumerate(shards):
        if not tensors:
            continue
        start, stop = tensors[0][1], tensors[-1][2]
        for off in range(start, stop, chunk):
            end = min(stop, off + chunk)
            c = Chunk(file, data_off + off, end - off)
            for name, b, e in tensors:
                lo, hi = max(b, off), min(e, end)
                if lo < hi:
                    c.pieces.append(Piece(name, lo - b, lo - off, hi - lo))
            chunks.append(c)
    return chunks


# ---- files --------------------------------------------------------------------------------------

def build_model(dir: Path, gib: float, shard_bytes: int = 1 << 30, seed: int = 0) -> list[Path]:
    """Random bf16 Llama as HF-sharded safetensors (+ config, index); reused when built alike."""
    dir.mkdir(parents=True, exist_ok=True)
    mark = {"gib": gib, "shard_bytes": shard_bytes, "seed": seed}
    if (dir / MARK).exists() and json.loads((dir / MARK).read_text()) == mark:
        return shard_paths(dir)
    cfg, specs = llama_specs(gib)
    shards: list[list[tuple[str, tuple[int, ...]]]] = [[]]
    size = 0
    for name, shape in specs:
        nbytes = 2 * math.prod(shape)
        if shards[-1] and size + nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append((name, shape))
        size += nbytes
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
        off = 0
        for name, shape in shard:
            meta[name] = {"dtype": "BF16", "shape": list(shape),
                          "data_offsets": [off, off + 2 * math.prod(shape)]}
            off += 2 * math.prod(shape)
            weight_map[name] = fname
        head = json.dumps(meta, separators=(",", ":")).encode()
        head += b" " * (-len(head) % 8)
        with open(dir / fname, "wb") as f:
            f.write(len(head).to_bytes(8, "little") + head)
            for _, shape in shard:
                bits = rng.integers(0, 1 << 16, size=math.prod(shape), dtype=np.uint16)
                f.write(((bits & np.uint16(0x807F)) | np.uint16(0x3C00)).tobytes())
    (dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (dir / INDEX).write_text(json.dumps({"weight_map": weight_map}, indent=2))
    (dir / MARK).write_text(json.dumps(mark))
    return shard_paths(dir)


def shard_paths(dir: Path) -> list[Path]:
    return [dir / f for f in sorted(set(json.loads((dir / INDEX).read_text())["weight_map"]
                                        .values()))]


def read_header(path: Path) -> tuple[int, list[tuple[str, tuple[int, ...], int, int]]]:
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))
    meta.pop("__metadata__", None)
    rows = [(k, tuple(v["shape"]), *v["data_offsets"]) for k, v in meta.items()]
    return 8 + n, sorted(rows, key=lambda r: r[2])


def drop_cache(paths: list[Path]) -> None:
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            os.fsync(fd)
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def sequential_read(paths: list[Path], chunk: int = 64 << 20) -> float:
    buf = mmap.mmap(-1, chunk)
    view = memoryview(buf)
    total, start = 0, time.perf_counter()
    for p in paths:
        fd = os.open(p, os.O_RDONLY)
        try:
            while (n := os.readv(fd, [view])) > 0:
                total += n
        finally:
            os.close(fd)
    rate = total / (time.perf_counter() - start)
    view.release()
    buf.close()
    return rate


def _preadv_full(fd: int, offset: int, view: memoryview) -> None:
    while len(view):
        n = os.preadv(fd, [view], offset)
        if n <= 0:
            raise EOFError(f"short read at {offset}")
        view, offset = view[n:], offset + n


# ---- basalt ring loader -------------------------------------------------------------------------

class RingLoader:
    """Reader threads fill a bounded ring of (pinned, on CUDA) host buffers; the caller's thread
    copies each filled buffer into the destination tensors, non_blocking on a side stream."""

    def __init__(self, device: str, ring: int = 8, chunk: int = 64 << 20, threads: int = 8):
        self.device, self.chunk, self.threads = device, chunk, threads
        cuda = device.startswith("cuda")
        self.bufs = [torch.empty(chunk, dtype=torch.uint8, pin_memory=cuda) for _ in range(ring)]
        self.views = [memoryview(b.numpy().data).cast("B") for b in self.bufs]
        self.stream = torch.cuda.Stream(device=device) if cuda else None
        self.events: list[Any] = [None] * ring

    def allocate(self, paths: list[Path]) -> dict[str, Any]:
        return {name: torch.empty(shape, dtype=torch.bfloat16, device=self.device)
                for p in paths for name, shape, _, _ in read_header(p)[1]}

    def load(self, paths: list[Path], params: dict[str, Any]) -> None:
        heads = [read_header(p) for p in paths]
        chunks = plan_chunks([(off, [(n, b, e) for n, _, b, e in rows]) for off, rows in heads],
                             self.chunk)
        flat = {k: t.view(-1).view(torch.uint8) for k, t in params.items()}
        fds = [os.open(p, os.O_RDONLY) for p in paths]
        free = deque(range(len(self.bufs)))
        pending: deque[tuple[Future[None], int, Chunk]] = deque()
        todo = iter(chunks)
        try:
            with ThreadPoolExecutor(self.threads) as pool:
                def submit() -> None:
                    c = next(todo, None)
                    if c is None:
                        return
                    slot = free.popleft()
                    if self.events[slot] is not None:
                        self.events[slot].synchronize()
                    view = self.views[slot][:c.length]
                    pending.append((pool.submit(_preadv_full, fds[c.file], c.offset, view),
                                    slot, c))
                for _ in range(len(self.bufs)):
                    submit()
                while pending:
                    fut, slot, c = pending.popleft()
                    fut.result()
                    self._copy_out(slot, c, flat)
                    free.append(slot)
                    submit()
            if self.stream is not None:
                self.stream.synchronize()
        finally:
            for fd in fds:
                os.close(fd)

    def _copy_out(self, slot: int, c: Chunk, flat: dict[str, Any]) -> None:
        buf = self.bufs[slot]
        if self.stream is None:
            for p in c.pieces:
                flat[p.name][p.dst_lo:p.dst_lo + p.n].copy_(buf[p.buf_lo:p.buf_lo + p.n])
            return
        with torch.cuda.stream(self.stream):
            for p in c.pieces:
                flat[p.name][p.dst_lo:p.dst_lo + p.n].copy_(buf[p.buf_lo:p.buf_lo + p.n],
                                                            non_blocking=True)
            event = torch.cuda.Event()
            event.record(self.stream)
            self.events[slot] = event


# ---- measurements -------------------------------------------------------------------------------

def h2d_rate(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = math.inf
    for _ in range(repeats):
        torch.cuda.synchronize()
        t = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def memcpy_rate(nbytes: int = 1 << 30, repeats: int = 3) -> float:
    src, dst = np.ones(nbytes, dtype=np.uint8), np.zeros(nbytes, dtype=np.uint8)
    best = math.inf
    for _ in range(repeats):
        t = time.perf_counter()
        np.copyto(dst, src)
        best = min(best, time.perf_counter() - t)
    return nbytes / best


def digest(params: dict[str, Any]) -> str:
    h = hashlib.sha256()
    for k in sorted(params):
        h.update(k.encode())
        h.update(params[k].view(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def timed(fn: Any, *args: Any) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    t = time.perf_counter()
    fn(*args)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t


def measure(paths: list[Path], device: str, ring: int, chunk: int, threads: int
            ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    nbytes = sum(p.stat().st_size for p in paths)
    drop_cache(paths)
    limits: dict[str, Any] = {"seq_read_bytes_per_s": sequential_read(paths),
                              "memcpy_bytes_per_s": memcpy_rate()}
    if device.startswith("cuda"):
        limits["h2d_pinned_bytes_per_s"] = h2d_rate()
    rows: list[dict[str, Any]] = []

    def row(loader: str, tier: str, seconds: float, limit_key: str) -> None:
        rate = nbytes / seconds
        rows.append({"loader": loader, "tier": tier, "bytes": nbytes, "seconds": seconds,
                     "bytes_per_s": rate, "limit": limit_key,
                     "share_of_limit": rate / limits[limit_key]})

    warm_limit = "h2d_pinned_bytes_per_s" if device.startswith("cuda") else "memcpy_bytes_per_s"
    loader = RingLoader(device, ring, chunk, threads)
    params = loader.allocate(paths)
    ref: str | None = None
    try:
        from safetensors.torch import load_file
        sequential_read(paths)
        seconds = timed(lambda: [load_file(str(p), device=device) for p in paths])
        row("safetensors.load_file", "warm", seconds, warm_limit)
        ref = digest({k: v for p in paths for k, v in load_file(str(p)).items()})
    except ImportError as e:
        rows.append({"loader": "safetensors.load_file", "tier": "warm", "error": str(e)})
    for tier in ("cold", "warm"):
        if tier == "cold":
            drop_cache(paths)
        else:
            sequential_read(paths)
        row("basalt_ring", tier, timed(loader.load, paths, params),
            "seq_read_bytes_per_s" if tier == "cold" else warm_limit)
    rows.append({"loader": "basalt_ring", "check": "same bytes as safetensors",
                 "ok": None if ref is None else digest(params) == ref})
    return limits, rows


def markdown(limits: dict[str, Any], rows: list[dict[str, Any]], machine: str) -> str:
    out = [f"Machine: {machine}.", "", "Limits: " + "; ".join(
        f"{k.removesuffix('_bytes_per_s')} {v / 1e9:.2f} GB/s" for k, v in limits.items()), "",
        "| loader | tier | GB | s | GB/s | share of limit |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        if "seconds" in r:
            out.append(f"| {r['loader']} | {r['tier']} | {r['bytes'] / 1e9:.2f} | "
                       f"{r['seconds']:.2f} | {r['bytes_per_s'] / 1e9:.2f} | "
                       f"{100 * r['share_of_limit']:.0f}% of {r['limit']} |")
        else:
            out.append(f"| {r['loader']} | {r.get('tier', '-')} | - | - | - | "
                       f"{r.get('error') or r.get('check')}: {r.get('ok', '')} |")
    return "\n".join(out) + "\n"


def lacking() -> list[str]:
    if torch is None:
        return ["torch"]
    return [] if torch.cuda.is_available() else ["a CUDA device (torch.cuda.is_available())"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gib", type=float, default=4.0)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workdir", type=Path, default=None, help="where the model is built")
    ap.add_argument("--ring", type=int, default=8)
    ap.add_argument("--chunk-mib", type=int, default=64)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--device", default="cuda", help="cuda, or cpu to try the CPU path")
    args = ap.parse_args(argv)
    missing = lacking() if args.device.startswith("cuda") else ([] if torch else ["torch"])
    if missing:
        print("coldstart_gpu: missing " + ", ".join(missing), file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    paths = build_model((args.workdir or args.out) / f"llama-{args.gib:g}g", args.gib)
    limits, rows = measure(paths, args.device, args.ring, args.chunk_mib << 20, args.threads)
    gpu = torch.cuda.get_device_name() if args.device.startswith("cuda") else "no GPU"
    machine = f"{gpu}, {os.cpu_count()} cores, {platform.platform()}, torch {torch.__version__}"
    (args.out / "coldstart_gpu.json").write_text(json.dumps(
        {"machine": machine, "limits": limits, "rows": rows}, indent=2))
    text = markdown(limits, rows, machine)
    (args.out / "coldstart_gpu.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
