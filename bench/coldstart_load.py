"""Cold-start weight-load benchmark on CPU: each loader's bandwidth against the machine's limits
(does file I/O: builds a random model, drops its pages from the cache, reads it back).

The model is Llama-shaped with random bf16 weights, written as HF-style sharded safetensors.
Every loader ends with the same bytes in the same preallocated parameter tensors (what a model's
`load_weights` leaves behind), so the rates compare like for like:

- `safe_open`: `safetensors.safe_open(framework="pt")` + `get_tensor` per name, copied into the
  parameter: vLLM's default path (`safetensors_weights_iterator`, weight_utils.py:1079).
- `load_file`: `safetensors.torch.load_file` per shard, then copied.
- `eager`: read the whole shard, `safetensors.torch.load(bytes)`: vLLM's
  `--safetensors-load-strategy eager`.
- `runai_streamer`: `runai_model_streamer.SafetensorsStreamer` to CPU, each tensor cloned as
  vLLM's `runai_safetensors_weights_iterator` does (weight_utils.py:1246), then copied.
- `fastsafetensors`: `fastsafe_open(device="cpu", nogds=True)`. vLLM's own iterator cannot do
  this: it always targets `cuda:N` (weight_utils.py:1301).
- `basalt_preadv`: N threads, each `os.preadv` of a byte range of a shard straight into the
  parameters' memory (no intermediate buffer, no mmap).

Tiers: "cold" = every shard fsync'd and dropped with posix_fadvise(DONTNEED) before the load;
"warm" = every shard read once just before. On a VM the drop reaches the guest's page cache
only; the host may still cache the disk, which `machine_limits` shows (O_DIRECT read rate).
"""

from __future__ import annotations

import json
import math
import mmap
import os
import platform
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SHARD_BYTES = 1 << 30
READ_CHUNK = 64 << 20
IOV_MAX = 512
BUILD_MARK = "coldstart_build.json"
INDEX_NAME = "model.safetensors.index.json"
LOADERS = ("safe_open", "load_file", "eager", "runai_streamer", "fastsafetensors",
           "basalt_preadv")


@dataclass(slots=True, frozen=True)
class TensorSpec:
    name: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return 2 * math.prod(self.shape)


@dataclass(slots=True, frozen=True)
class Segment:
    """One tensor's bytes in a shard: [begin, end) from the start of the shard's data."""
    name: str
    shape: tuple[int, ...]
    begin: int
    end: int


# ---- pure planning ----------------------------------------------------------------------------

def llama_config(gib: float) -> dict[str, Any]:
    """An HF LlamaConfig (TinyLlama's widths from 1 GiB up) with enough layers for `gib`."""
    big = gib >= 1.0
    hidden, inter, vocab, heads, kv = (2048, 5632, 32000, 32, 4) if big else (512, 1408, 8000, 8, 2)
    head_dim = hidden // heads
    per_layer = 2 * (2 * hidden * hidden + 2 * hidden * kv * head_dim + 3 * hidden * inter
                     + 2 * hidden)
    fixed = 2 * (2 * vocab * hidden + hidden)
    layers = max(1, math.ceil((gib * (1 << 30) - fixed) / per_layer))
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama",
            "hidden_size": hidden, "intermediate_size": inter, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv, "vocab_size": vocab,
            "max_position_embeddings": 4096, "rms_norm_eps": 1e-5, "torch_dtype": "bfloat16",
            "tie_word_embeddings": False}


def llama_tensors(cfg: dict[str, Any]) -> list[TensorSpec]:
    h, i, v = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    kvd = cfg["num_key_value_heads"] * h // cfg["num_attention_heads"]
    specs = [TensorSpec("model.embed_tokens.weight", (v, h))]
    for n in range(cfg["num_hidden_layers"]):
        p = f"model.layers.{n}."
        specs += [TensorSpec(p + "input_layernorm.weight", (h,)),
                  TensorSpec(p + "self_attn.q_proj.weight", (h, h)),
                  TensorSpec(p + "self_attn.k_proj.weight", (kvd, h)),
                  TensorSpec(p + "self_attn.v_proj.weight", (kvd, h)),
                  TensorSpec(p + "self_attn.o_proj.weight", (h, h)),
                  TensorSpec(p + "post_attention_layernorm.weight", (h,)),
                  TensorSpec(p + "mlp.gate_proj.weight", (i, h)),
                  TensorSpec(p + "mlp.up_proj.weight", (i, h)),
                  TensorSpec(p + "mlp.down_proj.weight", (h, i))]
    return specs + [TensorSpec("model.norm.weight", (h,)), TensorSpec("lm_head.weight", (v, h))]


def plan_shards(specs: list[TensorSpec], shard_bytes: int) -> list[list[TensorSpec]]:
    """Tensors in order, a new shard whenever the next would push one past `shard_bytes`."""
    shards: list[list[TensorSpec]] = [[]]
    size = 0
    for spec in specs:
        if shards[-1] and size + spec.nbytes > shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(spec)
        size += spec.nbytes
    return shards


def plan_reads(segments: list[Segment], chunk: int) -> list[list[tuple[Segment, int, int]]]:
    """Split a shard's data into reads of about `chunk` bytes, each a list of (segment, lo, hi)
    pieces (byte ranges within the segment) that lie back to back in the file."""
    reads: list[list[tuple[Segment, int, int]]] = [[]]
    room = chunk
    for seg in segments:
        lo = 0
        while lo < seg.end - seg.begin:
            if room == 0 or len(reads[-1]) >= IOV_MAX:
                reads.append([])
                room = chunk
            hi = min(seg.end - seg.begin, lo + room)
            reads[-1].append((seg, lo, hi))
            room -= hi - lo
            lo = hi
    return [r for r in reads if r]


def share(rate: float, limit: float) -> float:
    return rate / limit if limit > 0 else float("nan")


# ---- model files --------------------------------------------------------------------------------

def _header(shard: list[TensorSpec]) -> bytes:
    meta: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    off = 0
    for spec in shard:
        meta[spec.name] = {"dtype": "BF16", "shape": list(spec.shape),
                           "data_offsets": [off, off + spec.nbytes]}
        off += spec.nbytes
    raw = json.dumps(meta, separators=(",", ":")).encode()
    return raw + b" " * (-len(raw) % 8)


def _random_bf16(rng: np.random.Generator, n: int) -> bytes:
    """n random bf16 values with |x| in [2**-7, 2**-6): random sign and mantissa, fixed exponent."""
    bits = rng.integers(0, 1 << 16, size=n, dtype=np.uint16)
    return ((bits & np.uint16(0x807F)) | np.uint16(0x3C00)).tobytes()


def build_model(dir: Path, gib: float = 2.0, shard_bytes: int = SHARD_BYTES, seed: int = 0) -> Path:
    """Write the model under `dir` (config.json, shards, index); reuse a finished build of the
    same size."""
    dir.mkdir(parents=True, exist_ok=True)
    mark = {"gib": gib, "shard_bytes": shard_bytes, "seed": seed}
    mark_path = dir / BUILD_MARK
    if mark_path.exists() and json.loads(mark_path.read_text()) == mark:
        return dir
    cfg = llama_config(gib)
    shards = plan_shards(llama_tensors(cfg), shard_bytes)
    rng = np.random.default_rng(seed)
    weight_map: dict[str, str] = {}
    total = 0
    for k, shard in enumerate(shards):
        fname = f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
        with open(dir / fname, "wb") as f:
            head = _header(shard)
            f.write(len(head).to_bytes(8, "little") + head)
            for spec in shard:
                f.write(_random_bf16(rng, spec.nbytes // 2))
                weight_map[spec.name] = fname
                total += spec.nbytes
    (dir / "config.json").write_text(json.dumps(cfg, indent=2))
    (dir / INDEX_NAME).write_text(json.dumps(
        {"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    mark_path.write_text(json.dumps(mark))
    return dir


def shard_files(model: Path) -> list[Path]:
    index = json.loads((model / INDEX_NAME).read_text())
    return [model / f for f in sorted(set(index["weight_map"].values()))]


def read_segments(path: Path) -> tuple[int, list[Segment]]:
    """(offset of the data section, its tensors) from a shard's header."""
    with open(path, "rb") as f:
        n = int.from_bytes(f.read(8), "little")
        meta = json.loads(f.read(n))
    meta.pop("__metadata__", None)
    segs = [Segment(k, tuple(v["shape"]), *v["data_offsets"]) for k, v in meta.items()]
    return 8 + n, sorted(segs, key=lambda s: s.begin)


# ---- page cache and machine limits --------------------------------------------------------------

def drop_cache(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


def resident_bytes(path: Path) -> int | None:
    """Bytes of `path` in this kernel's page cache (util-linux fincore), None without fincore."""
    if shutil.which("fincore") is None:
        return None
    out = subprocess.run(["fincore", "--bytes", "--noheadings", "--output", "RES", str(path)],
                         capture_output=True, text=True, check=False).stdout.strip()
    return int(out) if out.isdigit() else None


def sequential_read(paths: list[Path], direct: bool = False) -> tuple[int, float]:
    """One thread reading the files end to end in READ_CHUNK pieces: (bytes, seconds)."""
    buf = mmap.mmap(-1, READ_CHUNK)  # page aligned, as O_DIRECT needs
    view = memoryview(buf)
    total = 0
    start = time.perf_counter()
    for path in paths:
        fd = os.open(path, os.O_RDONLY | (os.O_DIRECT if direct else 0))
        try:
            while (n := os.readv(fd, [view])) > 0:
                total += n
        finally:
            os.close(fd)
    seconds = time.perf_counter() - start
    view.release()
    buf.close()
    return total, seconds


def parallel_read(paths: list[Path], threads: int, chunk: int = 16 << 20) -> tuple[int, float]:
    """`threads` readers, each reading its own contiguous slice of every file: (bytes, seconds)."""
    def read_slice(job: tuple[Path, int, int]) -> int:
        path, lo, hi = job
        buf = bytearray(chunk)
        view, got = memoryview(buf), 0
        fd = os.open(path, os.O_RDONLY)
        try:
            while lo + got < hi:
                n = os.preadv(fd, [view[:min(chunk, hi - lo - got)]], lo + got)
                if n <= 0:
                    break
                got += n
        finally:
            os.close(fd)
        return got

    jobs = []
    for path in paths:
        size = path.stat().st_size
        cuts = [size * k // threads for k in range(threads + 1)]
        jobs += [(path, cuts[k], cuts[k + 1]) for k in range(threads)]
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        total = sum(pool.map(read_slice, jobs))
    return total, time.perf_counter() - start


def memcpy_rate(nbytes: int = 1 << 30, threads: int = 1, repeats: int = 3) -> float:
    src = np.ones(nbytes, dtype=np.uint8)
    dst = np.zeros(nbytes, dtype=np.uint8)
    bounds = np.linspace(0, nbytes, threads + 1, dtype=np.int64)
    best = math.inf
    with ThreadPoolExecutor(threads) as pool:
        for _ in range(repeats):
            start = time.perf_counter()
            list(pool.map(lambda k: np.copyto(dst[bounds[k]:bounds[k + 1]],
                                              src[bounds[k]:bounds[k + 1]]), range(threads)))
            best = min(best, time.perf_counter() - start)
    return nbytes / best


def h2d_rate(nbytes: int = 1 << 30, repeats: int = 3) -> float | None:
    if not torch.cuda.is_available():
        return None
    src = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(nbytes, dtype=torch.uint8, device="cuda")
    best = math.inf
    for _ in range(repeats):
        torch.cuda.synchronize()
        start = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return nbytes / best


def machine_limits(path: Path | list[Path], threads: int | None = None,
                   memcpy_bytes: int = 1 << 30, repeats: int = 3) -> dict[str, Any]:
    """Storage read (page cache dropped; and O_DIRECT), memcpy (1 and N threads), pinned H2D;
    each the best of `repeats`, as the loaders' rows are."""
    paths = [path] if isinstance(path, Path) else list(path)
    threads = threads or os.cpu_count() or 1
    loadavg = os.getloadavg()[0]
    reads, direct_reads, par_reads = [], [], []
    for _ in range(repeats):
        for p in paths:
            drop_cache(p)
        resident_after_drop = sum(resident_bytes(p) or 0 for p in paths)
        reads.append(sequential_read(paths))
        direct_reads.append(sequential_read(paths, direct=True))
        for p in paths:
            drop_cache(p)
        par_reads.append(parallel_read(paths, max(2, threads)))
    nbytes, secs = min(reads, key=lambda r: r[1])
    dnbytes, dsecs = min(direct_reads, key=lambda r: r[1])
    pnbytes, psecs = min(par_reads, key=lambda r: r[1])
    m1 = memcpy_rate(memcpy_bytes, threads=1, repeats=repeats)
    mn = memcpy_rate(memcpy_bytes, threads=threads, repeats=repeats) if threads > 1 else m1
    return {"seq_read_bytes_per_s": nbytes / secs, "seq_read_bytes": nbytes,
            "odirect_read_bytes_per_s": dnbytes / dsecs,
            f"parallel_read_{max(2, threads)}t_bytes_per_s": pnbytes / psecs,
            "resident_after_drop_bytes": resident_after_drop,
            "memcpy_1t_bytes_per_s": m1, f"memcpy_{threads}t_bytes_per_s": mn,
            "memcpy_bytes_per_s": max(m1, mn),
            "h2d_pinned_bytes_per_s": h2d_rate(memcpy_bytes),
            "seq_read_runs_s": [r[1] for r in reads], "loadavg_1m": loadavg}


def machine_line() -> str:
    cpu = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    ram = int(Path("/proc/meminfo").read_text().split()[1]) / (1 << 20)
    return (f"{cpu}, {os.cpu_count()} cores, {ram:.0f} GiB RAM, {platform.system()} "
            f"{platform.release()}, torch {torch.__version__}")


# ---- loaders: each fills `params` (name -> preallocated bf16 tensor) from the shards -----------

Params = dict[str, torch.Tensor]


def allocate_params(files: list[Path]) -> Params:
    """The model's parameters, allocated and touched before any load (as model init does)."""
    params: Params = {}
    for path in files:
        for seg in read_segments(path)[1]:
            params[seg.name] = torch.zeros(seg.shape, dtype=torch.bfloat16)
    return params


def load_safe_open(files: list[Path], params: Params) -> None:
    from safetensors import safe_open
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                params[name].copy_(f.get_tensor(name))


def load_load_file(files: list[Path], params: Params) -> None:
    from safetensors.torch import load_file
    for path in files:
        for name, t in load_file(str(path)).items():
            params[name].copy_(t)


def load_eager(files: list[Path], params: Params) -> None:
    from safetensors.torch import load
    for path in files:
        for name, t in load(path.read_bytes()).items():
            params[name].copy_(t)


def load_runai_streamer(files: list[Path], params: Params) -> None:
    from runai_model_streamer import SafetensorsStreamer
    with SafetensorsStreamer() as streamer:
        streamer.stream_files([str(p) for p in files], device="cpu")
        for name, t in streamer.get_tensors():
            params[name].copy_(t.clone())


def load_fastsafetensors(files: list[Path], params: Params) -> None:
    from fastsafetensors import fastsafe_open
    with fastsafe_open([str(p) for p in files], framework="pt", device="cpu", nogds=True) as f:
        for name in f.keys():  # noqa: SIM118 - fastsafe_open has keys(), not __iter__
            params[name].copy_(f.get_tensor(name))


def _preadv_all(fd: int, offset: int, bufs: list[memoryview]) -> None:
    """preadv until every buffer is full (short reads happen)."""
    while bufs:
        n = os.preadv(fd, bufs, offset)
        if n <= 0:
            raise EOFError(f"short read at offset {offset}")
        offset += n
        while bufs and n >= len(bufs[0]):
            n -= len(bufs[0])
            bufs = bufs[1:]
        if n:
            bufs = [bufs[0][n:], *bufs[1:]]


def make_basalt_preadv(threads: int = 2, chunk: int = 16 << 20) -> Callable[[list[Path], Params],
                                                                           None]:
    def load(files: list[Path], params: Params) -> None:
        views = {k: memoryview(t.view(torch.uint8).numpy().data).cast("B")
                 for k, t in params.items()}
        fds = [os.open(p, os.O_RDONLY) for p in files]
        try:
            jobs: list[tuple[int, int, list[memoryview]]] = []
            for fd, path in zip(fds, files, strict=True):
                data_off, segs = read_segments(path)
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
                for read in plan_reads(segs, chunk):
                    seg0, lo0, _ = read[0]
                    bufs = [views[s.name][lo:hi] for s, lo, hi in read]
                    jobs.append((fd, data_off + seg0.begin + lo0, bufs))
            with ThreadPoolExecutor(threads) as pool:
                list(pool.map(lambda j: _preadv_all(*j), jobs))
        finally:
            for fd in fds:
                os.close(fd)
    return load


def available_loaders(threads: int = 2) -> dict[str, Callable[[list[Path], Params], None]]:
    """Loaders whose library imports here; missing ones are listed by `unavailable_loaders`."""
    found: dict[str, Callable[[list[Path], Params], None]] = {
        "safe_open": load_safe_open, "load_file": load_load_file, "eager": load_eager}
    for name, fn in (("runai_streamer", load_runai_streamer),
                     ("fastsafetensors", load_fastsafetensors)):
        if name not in unavailable_loaders():
            found[name] = fn
    found["basalt_preadv"] = make_basalt_preadv(threads)
    return found


def unavailable_loaders() -> dict[str, str]:
    """Loader -> why it cannot run here."""
    missing: dict[str, str] = {}
    for name, module in (("runai_streamer", "runai_model_streamer"),
                         ("fastsafetensors", "fastsafetensors")):
        try:
            __import__(module)
        except Exception as e:  # noqa: BLE001 - any import failure means unavailable
            missing[name] = f"{type(e).__name__}: {e}"
    return missing


# ---- the run ------------------------------------------------------------------------------------

def prime(files: list[Path]) -> None:
    sequential_read(files)


def time_load(fn: Callable[[list[Path], Params], None], files: list[Path], params: Params,
              tier: str) -> float:
    if tier == "cold":
        for p in files:
            drop_cache(p)
    else:
        prime(files)
    start = time.perf_counter()
    fn(files, params)
    return time.perf_counter() - start


def checksum(params: Params) -> str:
    import hashlib
    h = hashlib.sha256()
    for name in sorted(params):
        h.update(name.encode())
        h.update(params[name].view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def iter_runs(files: list[Path], limits: dict[str, Any], threads: int | None = None,
              loaders: list[str] | None = None, repeats: int = 2) -> Iterator[dict[str, Any]]:
    """One row per (loader, tier): the best of `repeats` loads (the machine may be shared)."""
    nbytes = sum(p.stat().st_size for p in files)
    params = allocate_params(files)
    chosen = available_loaders(threads or os.cpu_count() or 1)
    for name in loaders or list(chosen):
        for tier in ("cold", "warm"):
            runs = []
            for _ in range(repeats):
                runs.append(time_load(chosen[name], files, params, tier))
                for t in params.values():
                    t.zero_()
            seconds = min(runs)
            limit = limits["seq_read_bytes_per_s" if tier == "cold" else "memcpy_bytes_per_s"]
            yield {"loader": name, "tier": tier, "bytes": nbytes, "seconds": seconds,
                   "bytes_per_s": nbytes / seconds, "runs_s": runs,
                   "share_of_limit": share(nbytes / seconds, limit)}


def run(workdir: Path, gib: float = 2.0, limits: dict[str, Any] | None = None,
        threads: int | None = None, loaders: list[str] | None = None,
        repeats: int = 2) -> list[dict[str, Any]]:
    """Build (or reuse) the model, measure the limits if not given, time every loader."""
    files = shard_files(build_model(workdir / f"llama-{gib:g}g", gib))
    limits = limits if limits is not None else machine_limits(files)
    return list(iter_runs(files, limits, threads, loaders, repeats))


def _gbs(x: float | None) -> str:
    return "n/a" if x is None else f"{x / 1e9:.2f}"


def _parallel(limits: dict[str, Any]) -> str:
    for key, value in limits.items():
        if key.startswith("parallel_read_"):
            n = key.removeprefix("parallel_read_").split("t_")[0]
            return f"{n} threads reading slices (page cache dropped) {_gbs(value)} GB/s; "
    return ""


def markdown(rows: list[dict[str, Any]], limits: dict[str, Any]) -> str:
    limit_line = (
        f"Limits: sequential read (page cache dropped) {_gbs(limits['seq_read_bytes_per_s'])}"
        f" GB/s; O_DIRECT read {_gbs(limits.get('odirect_read_bytes_per_s'))} GB/s; "
        f"{_parallel(limits)}"
        f"memcpy {_gbs(limits['memcpy_bytes_per_s'])} GB/s; pinned H2D "
        f"{_gbs(limits.get('h2d_pinned_bytes_per_s'))} GB/s; 1-min load average at the start "
        f"{limits.get('loadavg_1m', float('nan')):.1f}. Each row is the best of its runs.")
    lines = [f"Machine: {machine_line()}.", "", limit_line, "",
             "| loader | tier | GB | s | GB/s | share of limit |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['loader']} | {r['tier']} | {r['bytes'] / 1e9:.2f} | "
                     f"{r['seconds']:.2f} | {_gbs(r['bytes_per_s'])} | "
                     f"{100 * r['share_of_limit']:.0f}% |")
    for name, why in unavailable_loaders().items():
        lines.append(f"| {name} | - | - | - | not available | {why} |")
    return "\n".join(lines) + "\n"
