"""Reads a model's weight files into host memory (the page cache) before its engine starts (does I/O).

A few threads do large sequential reads into a reused buffer each; files are cut into segments
so one big file is read by several threads at once. The engine's own load then reads from
memory. `Warming` runs it on its own thread while the process imports and connects; stopping
it (or cancelling its await) ends the reads at their next chunk.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf")
CHUNK_BYTES = 16 << 20  # one readinto
SEGMENT_BYTES = 256 << 20  # one thread's share of a file at a time
THREADS = 4


@dataclass(slots=True, frozen=True)
class Warmed:
    files: int
    bytes: int  # bytes read (0 when skipped)
    seconds: float
    finished_ts: float = 0.0  # wall clock when the last read ended
    skipped: str = ""  # why nothing was read, when nothing was


def weight_files(root: str | Path) -> list[Path]:
    """Weight files under `root` (symlinked files followed, as in a Hugging Face cache),
    sorted; [] when `root` is empty or not a directory."""
    if not root or not os.path.isdir(root):
        return []
    found: list[Path] = []
    for folder, _dirs, names in os.walk(root):
        found.extend(Path(folder, n) for n in names
                     if n.endswith(WEIGHT_SUFFIXES) and os.path.isfile(os.path.join(folder, n)))
    return sorted(found)


def segments(sizes: Sequence[tuple[Path, int]], segment: int = SEGMENT_BYTES
             ) -> Iterator[tuple[Path, int, int]]:
    """(path, offset, length) pieces of at most `segment` bytes covering every file."""
    for path, size in sizes:
        for offset in range(0, size, segment):
            yield path, offset, min(segment, size - offset)


def available_memory() -> int | None:
    """MemAvailable from /proc/meminfo in bytes (None where unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _read_segment(path: Path, offset: int, length: int, buf: bytearray,
                  stop: threading.Event) -> int:
    view = memoryview(buf)
    done = 0
    with open(path, "rb", buffering=0) as f:
        if hasattr(os, "posix_fadvise"):
            os.posix_fadvise(f.fileno(), offset, length, os.POSIX_FADV_SEQUENTIAL)
        f.seek(offset)
        while done < length and not stop.is_set():
            n = f.readinto(view[: min(len(buf), length - done)])
            if not n:
                break
            done += n
    return done


def read_files(files: Sequence[Path], threads: int = THREADS, chunk: int = CHUNK_BYTES,
               stop: threading.Event | None = None) -> Warmed:
    """Read every byte of `files` once, `threads` at a time; blocks until done."""
    stop = stop or threading.Event()
    pieces = list(segments([(p, p.stat().st_size) for p in files]))
    lock = threading.Lock()
    total = 0

    def worker() -> None:
        nonlocal total
        buf = bytearray(chunk)
        while not stop.is_set():
            with lock:
                if not pieces:
                    return
                path, offset, length = pieces.pop()
            n = _read_segment(path, offset, length, buf, stop)
            with lock:
                total += n

    t0 = time.monotonic()
    pieces.reverse()  # pop() from the end: files in order, each from its start
    with ThreadPoolExecutor(max_workers=max(threads, 1), thread_name_prefix="warm") as pool:
        for future in [pool.submit(worker) for _ in range(max(threads, 1))]:
            future.result()
    return Warmed(files=len(files), bytes=total, seconds=time.monotonic() - t0,
                  finished_ts=time.time())


def warm(root: str | Path, threads: int = THREADS, stop: threading.Event | None = None
         ) -> Warmed | None:
    """Read the weight files under `root` into memory; None when there are none. Skipped
    (nothing read) when they would not fit in available memory: the page cache would evict
    what it had just read, and the engine would read it all again."""
    files = weight_files(root)
    if not files:
        return None
    size = sum(p.stat().st_size for p in files)
    free = available_memory()
    if free is not None and size > 0.9 * free:
        return Warmed(len(files), 0, 0.0, skipped=f"{size} bytes of weights, {free} available")
    return read_files(files, threads, CHUNK_BYTES, stop)


class Warming:
    """A warm running on its own thread from the process's first moments, so the reads overlap
    the engine's imports (vLLM, torch); `result()` awaits it, `stop()` ends it early."""

    def __init__(self, root: str | Path, threads: int = THREADS) -> None:
        self._stop = threading.Event()
        pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="warm-main")
        self._future = pool.submit(warm, root, threads, self._stop)
        pool.shutdown(wait=False)

    async def result(self) -> Warmed | None:
        """The warm's outcome (raises what it raised); cancelling this stops the reads."""
        try:
            return await asyncio.wrap_future(self._future)
        except asyncio.CancelledError:
            self.stop()
            raise

    def stop(self) -> None:
        """Stop reading at the next chunk (the process must not wait on reads to exit)."""
        self._stop.set()
