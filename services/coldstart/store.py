"""The node cache on disk: blobs by sha256, one directory of hard links per revision, one
manifest per revision (does I/O).

    <root>/blobs/<sha256>            file contents, stored once however many revisions hold them
    <root>/revisions/<key>/<path>    hard links to blobs: the directory an engine loads
    <root>/manifests/<key>.json      files, sizes, hashes; written last, so a revision whose
                                     manifest exists is complete
    <root>/partial/<key>/<path>      downloads in progress (kept across restarts: they resume)

Integrity: every file is hashed as it comes in and compared with the source's hash where the
source gives one; a mismatch is deleted and fetched again, never linked into a revision. A
present revision is checked again on each use: a blob whose size or mtime changed since it was
hashed is hashed again, and a revision with a bad blob is fetched again.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import hashlib
import json
import mmap
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from basalt.log import get_logger

from .core.cache import Held
from .sources import Listing, RemoteFile, Source, SourceError

log = get_logger(__name__)

HASH_CHUNK = 16 << 20


@dataclass(slots=True)
class FileEntry:
    path: str
    size: int
    sha256: str
    # mtime_ns of the blob when it was last hashed: a changed one is hashed again.
    mtime_ns: int = 0


@dataclass(slots=True)
class Manifest:
    key: str
    uri: str
    revision: str
    resolved: str
    files: list[FileEntry] = field(default_factory=list)
    fetched_ts: float = 0.0
    last_used_ts: float = 0.0
    # Bytes the fetch that made it present took from the source.
    fetched_bytes: int = 0

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)

    def held(self) -> Held:
        return Held(self.key, {f.sha256: f.size for f in self.files}, self.last_used_ts)

    @classmethod
    def from_json(cls, raw: str) -> Manifest:
        doc = json.loads(raw)
        doc["files"] = [FileEntry(**f) for f in doc.get("files", [])]
        return cls(**doc)


class Corrupt(SourceError):
    """A fetched file's hash is not the one its source gave."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


class Store:
    """One node's cache directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        for sub in ("blobs", "revisions", "manifests", "partial"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    def blob(self, sha: str) -> Path:
        return self.root / "blobs" / sha

    def revision_dir(self, key: str) -> Path:
        return self.root / "revisions" / key

    def _manifest_path(self, key: str) -> Path:
        return self.root / "manifests" / f"{key}.json"

    # -- reading -------------------------------------------------------------------------

    def manifests(self) -> dict[str, Manifest]:
        out = {}
        for path in sorted((self.root / "manifests").glob("*.json")):
            try:
                m = Manifest.from_json(path.read_text())
            except (OSError, ValueError, TypeError) as e:
                log.warning("manifest_unreadable", path=str(path), error=str(e))
                continue
            out[m.key] = m
        return out

    def manifest(self, key: str) -> Manifest | None:
        try:
            return Manifest.from_json(self._manifest_path(key).read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError, TypeError) as e:
            log.warning("manifest_unreadable", key=key, error=str(e))
            return None

    def used_bytes(self) -> int:
        """Bytes of blobs plus partial downloads on disk."""
        total = 0
        for sub in ("blobs", "partial"):
            for p in (self.root / sub).rglob("*"):
                if p.is_file():
                    total += p.stat().st_size
        return total

    def partial_bytes(self) -> int:
        return sum(p.stat().st_size for p in (self.root / "partial").rglob("*") if p.is_file())

    # -- checking a present revision ----------------------------------------------------

    def check(self, m: Manifest) -> list[str]:
        """Paths of `m` whose blob is missing or no longer matches its hash (rehashing only
        blobs whose size or mtime changed); relinks a missing link to a good blob."""
        bad = []
        changed = False
        for f in m.files:
            blob = self.blob(f.sha256)
            try:
                st = blob.stat()
            except FileNotFoundError:
                bad.append(f.path)
                continue
            if st.st_size != f.size or st.st_mtime_ns != f.mtime_ns:
                if st.st_size != f.size or sha256_file(blob) != f.sha256:
                    blob.unlink(missing_ok=True)
                    bad.append(f.path)
                    continue
                f.mtime_ns, changed = st.st_mtime_ns, True
            link = self.revision_dir(m.key) / f.path
            if not link.exists():
                link.parent.mkdir(parents=True, exist_ok=True)
                os.link(blob, link)
        if bad:
            log.warning("weights_corrupt", key=m.key, files=bad[:5], count=len(bad))
        elif changed:
            self._write_manifest(m)
        return bad

    def touch(self, key: str, now: float) -> None:
        m = self.manifest(key)
        if m is not None:
            m.last_used_ts = now
            self._write_manifest(m)

    # -- fetching -------------------------------------------------------------------------

    async def fetch(self, key: str, uri: str, revision: str, source: Source, listing: Listing,
                    progress: Callable[[int], None], now: Callable[[], float] = time.time,
                    ) -> Manifest:
        """Make revision `key` present: fetch each file not stored yet (resuming partial
        downloads), verify, store by hash, link, and write the manifest last."""
        entries = []
        fetched = 0

        def counted(n: int) -> None:
            nonlocal fetched
            fetched += n
            progress(n)

        for rf in listing.files:
            entries.append(await self._fetch_file(key, source, rf, counted))
        await asyncio.to_thread(self._link, key, entries)
        m = Manifest(key, uri, revision, listing.resolved, entries, now(), now(), fetched)
        self._write_manifest(m)
        shutil.rmtree(self.root / "partial" / key, ignore_errors=True)
        return m

    def stored(self, rf: RemoteFile) -> bool:
        """Whether `rf`'s content is stored already (only a known hash can say)."""
        return bool(rf.sha256) and self.blob(rf.sha256).is_file() and \
            self.blob(rf.sha256).stat().st_size == rf.size

    async def _fetch_file(self, key: str, source: Source, rf: RemoteFile,
                          progress: Callable[[int], None]) -> FileEntry:
        if self.stored(rf):
            st = self.blob(rf.sha256).stat()
            return FileEntry(rf.path, rf.size, rf.sha256, st.st_mtime_ns)
        part = self.root / "partial" / key / rf.path
        part.parent.mkdir(parents=True, exist_ok=True)
        for attempt in (1, 2):
            await source.fetch(rf, part, progress)
            size = part.stat().st_size
            sha = await asyncio.to_thread(sha256_file, part)
            if size == rf.size and (not rf.sha256 or sha == rf.sha256):
                break
            log.warning("weights_file_corrupt", key=key, path=rf.path, attempt=attempt,
                        size=size, expected_size=rf.size, sha256=sha, expected=rf.sha256)
            part.unlink(missing_ok=True)
        else:
            raise Corrupt(f"{source.description}: {rf.path} arrived corrupt twice "
                          f"(expected sha256 {rf.sha256 or '?'}, {rf.size} bytes)")
        blob = self.blob(sha)
        if blob.exists():  # another revision stored the same bytes meanwhile
            part.unlink()
        else:
            os.chmod(part, 0o444)
            os.replace(part, blob)
        return FileEntry(rf.path, rf.size, sha, blob.stat().st_mtime_ns)

    def _link(self, key: str, entries: list[FileEntry]) -> None:
        final = self.revision_dir(key)
        tmp = final.with_name(key + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        for e in entries:
            dest = tmp / e.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.link(self.blob(e.sha256), dest)
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)

    def _write_manifest(self, m: Manifest) -> None:
        path = self._manifest_path(m.key)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(asdict(m)))
        tmp.replace(path)

    # -- evicting -------------------------------------------------------------------------

    def evict(self, key: str) -> int:
        """Remove revision `key` and every blob no other revision links; returns bytes freed.
        The manifest goes first: a crash midway leaves an absent revision, never a broken one."""
        m = self.manifest(key)
        self._manifest_path(key).unlink(missing_ok=True)
        shutil.rmtree(self.revision_dir(key), ignore_errors=True)
        freed = 0
        for f in (m.files if m else []):
            blob = self.blob(f.sha256)
            try:
                st = blob.stat()
            except FileNotFoundError:
                continue
            if st.st_nlink == 1:  # only the blob store holds it now
                blob.unlink()
                freed += st.st_size
        return freed

    # -- the warm tier (page cache) -------------------------------------------------------

    def warm(self, m: Manifest) -> int:
        """Read the revision's blobs that are not all in memory, so the page cache holds them
        (WILLNEED alone reads ahead only a few MB here); returns bytes read."""
        read = 0
        buf = bytearray(HASH_CHUNK)
        for f in m.files:
            blob = self.blob(f.sha256)
            if resident(blob) >= f.size:
                continue
            try:
                with open(blob, "rb", buffering=0) as fh:
                    while n := fh.readinto(buf):
                        read += n
            except FileNotFoundError:
                continue
        return read

    def drop(self, m: Manifest) -> None:
        """Drop the revision from the page cache (POSIX_FADV_DONTNEED): a cold read next."""
        for f in m.files:
            try:
                fd = os.open(self.blob(f.sha256), os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)

    def resident_bytes(self, m: Manifest) -> int:
        """Bytes of the revision in the page cache now (mincore)."""
        return sum(resident(self.blob(f.sha256)) for f in m.files)


_libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
_PAGE = mmap.PAGESIZE


def resident(path: Path) -> int:
    """Bytes of `path` in the page cache, from mincore(2) over a read-only mapping."""
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return 0
    if size == 0:
        return 0
    # A private (copy-on-write) mapping: ctypes needs a writable buffer; nothing is written,
    # so its pages are the page cache's own.
    with open(path, "rb") as f, mmap.mmap(f.fileno(), size, access=mmap.ACCESS_COPY) as mm:
        pages = (size + _PAGE - 1) // _PAGE
        vec = (ctypes.c_ubyte * pages)()
        buf = (ctypes.c_char * size).from_buffer(mm)
        addr = ctypes.addressof(buf)
        del buf  # the mapping cannot close while ctypes exports it
        rc = _libc.mincore(ctypes.c_void_p(addr), ctypes.c_size_t(size), vec)
        if rc != 0:
            return 0
        return min(size, bytes(vec).count(1) * _PAGE)  # bit 0: resident; the rest are 0
