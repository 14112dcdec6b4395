"""Where weights come from, behind one small interface (does I/O): a local directory, an HTTP(S)
directory described by a `basalt-manifest.json`, the Hugging Face Hub, and any fsspec store.

Each source lists one revision's files (`list`) and writes one file's bytes into a partial file,
resuming what an interrupted fetch left there (`fetch`). Hashes are the caller's to verify: a
source only says the sha256 when it knows it. Blocking file I/O runs in threads; progress
callbacks always run on the event loop.
"""

from __future__ import annotations

import asyncio
import fnmatch
import hashlib
import itertools
import json
import os
import posixpath
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol
from urllib.parse import quote, unquote, urlsplit

import fsspec
import httpx
from huggingface_hub import HfApi, hf_hub_url

from basalt.pb import deploy_pb2

MANIFEST = "basalt-manifest.json"
COPY_CHUNK = 16 << 20  # local and fsspec copies read this much at a time
FLUSH_BYTES = 1 << 20  # an HTTP stream is written out in pieces of about this size
PARALLEL_MIN = 64 << 20  # files this large are fetched in concurrent ranged parts
PART_MIN = 16 << 20
MAX_PARTS = 8
ATTEMPTS = 5  # tries per part without progress before a transient error is final
BACKOFF_S = 0.1  # doubled after each failed try
TIMEOUT = httpx.Timeout(60.0, connect=10.0)

Progress = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class RemoteFile:
    path: str  # relative posix path inside the revision, e.g. "model.safetensors"
    size: int
    sha256: str  # hex; "" when the source does not say (the cache hashes what it writes)


@dataclass(frozen=True, slots=True)
class Listing:
    resolved: str  # the resolved revision: a Hub commit, a local dir's fingerprint, ...
    files: list[RemoteFile]  # sorted by path


class SourceError(Exception):
    """A source could not list or fetch; the message names the source (and file) and why,
    never a token."""


class Source(Protocol):
    description: str  # where it reads, e.g. "http://127.0.0.1:8000/tiny" (no credentials)

    async def list(self) -> Listing: ...

    async def fetch(self, file: RemoteFile, dest: Path, progress: Progress) -> None:
        """Write the file's bytes to `dest`, a partial file: if `dest` already holds some bytes
        from an interrupted fetch, resume instead of starting over. Call progress(n) for each n
        new bytes written. Raise SourceError on failure (after a few retries for transient
        network errors). Do not verify the hash (the caller does)."""
        ...


# -- helpers shared by sources (pure unless named otherwise) ---------------------------------

def fingerprint(entries: Iterable[tuple[str, int, object]]) -> str:
    """A revision for a source without one: sha256 of its sorted (path, size, version) lines,
    where version is an mtime or ETag; 16 hex digits."""
    lines = sorted(f"{path}\t{size}\t{version}\n" for path, size, version in entries)
    return hashlib.sha256("".join(lines).encode()).hexdigest()[:16]


def select(files: Iterable[RemoteFile], patterns: Iterable[str]) -> list[RemoteFile]:
    """The files matching any of the globs (all files when there are none), sorted by path."""
    globs = list(patterns)
    chosen = [f for f in files if not globs or any(fnmatch.fnmatch(f.path, g) for g in globs)]
    return sorted(chosen, key=lambda f: f.path)


def plan_parts(size: int) -> list[tuple[int, int]]:
    """Byte ranges [start, end) of a parallel fetch: up to MAX_PARTS parts of >= PART_MIN."""
    count = max(1, min(MAX_PARTS, size // PART_MIN))
    bounds = [size * i // count for i in range(count + 1)]
    return list(itertools.pairwise(bounds))


def _scrub(text: str, token: str) -> str:
    return text.replace(token, "***") if token else text


def _scan(root: Path) -> list[tuple[str, os.stat_result]]:
    """Regular files under `root` (blocking): relative posix path and stat, sorted, skipping
    dot-directories and the top-level manifest (it describes the others)."""
    found: list[tuple[str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            full = Path(dirpath, name)
            rel = full.relative_to(root).as_posix()
            if rel != MANIFEST and full.is_file():
                found.append((rel, full.stat()))
    return sorted(found, key=lambda e: e[0])


def write_manifest(directory: Path) -> Path:
    """Write DIR/basalt-manifest.json (blocking: hashes every file), what an HTTP source reads
    in place of a listing: {"revision": fingerprint, "files": [{path, size, sha256}, ...]}."""
    scanned = _scan(directory)
    files = []
    for rel, st in scanned:
        with open(directory / rel, "rb") as f:
            sha = hashlib.file_digest(f, "sha256").hexdigest()
        files.append({"path": rel, "size": st.st_size, "sha256": sha})
    revision = fingerprint((rel, st.st_size, st.st_mtime_ns) for rel, st in scanned)
    out = directory / MANIFEST
    tmp = out.with_suffix(".json.tmp")
    tmp.write_text(json.dumps({"revision": revision, "files": files}, indent=1))
    os.replace(tmp, out)
    return out


def _parse_manifest(raw: bytes, where: str) -> tuple[str, list[RemoteFile]]:
    try:
        doc = json.loads(raw)
        files = [RemoteFile(str(f["path"]), int(f["size"]), str(f.get("sha256", "")))
                 for f in doc["files"]]
        return str(doc.get("revision", "")), files
    except (ValueError, KeyError, TypeError) as e:
        raise SourceError(f"{where}: bad {MANIFEST}: {e}") from None


def _copy_from(src: IO[bytes], dest: Path, size: int, report: Progress) -> None:
    """Append `src`'s bytes past dest's current length to dest (blocking); start over when dest
    is longer than the file."""
    have = dest.stat().st_size if dest.exists() else 0
    if have > size:
        have = 0
    src.seek(have)
    with open(dest, "r+b" if have else "wb") as out:
        out.seek(have)
        out.truncate()
        while chunk := src.read(COPY_CHUNK):
            out.write(chunk)
            report(len(chunk))


async def _copy_in_thread(opener: Callable[[], IO[bytes]], dest: Path, size: int,
                          progress: Progress) -> None:
    loop = asyncio.get_running_loop()

    def report(n: int) -> None:  # progress runs on the loop, before this coroutine resumes
        loop.call_soon_threadsafe(progress, n)

    def work() -> None:
        with opener() as src:
            _copy_from(src, dest, size, report)

    await asyncio.to_thread(work)


# -- local directory -------------------------------------------------------------------------

class LocalSource:
    """A directory on this node (or a mount). sha256 comes from a basalt-manifest.json in it
    when that names the file at its current size."""

    def __init__(self, root: Path, revision: str = "", patterns: Iterable[str] = ()) -> None:
        self.root = root
        self.revision = revision
        self.patterns = list(patterns)
        self.description = str(root)

    async def list(self) -> Listing:
        return await asyncio.to_thread(self._list)

    def _list(self) -> Listing:
        if not self.root.is_dir():
            raise SourceError(f"{self.description}: not a directory")
        known: dict[str, RemoteFile] = {}
        if (self.root / MANIFEST).is_file():
            _, listed = _parse_manifest((self.root / MANIFEST).read_bytes(), self.description)
            known = {f.path: f for f in listed}
        scanned = _scan(self.root)
        files = []
        for rel, st in scanned:
            hint = known.get(rel)
            sha = hint.sha256 if hint is not None and hint.size == st.st_size else ""
            files.append(RemoteFile(rel, st.st_size, sha))
        resolved = self.revision or fingerprint(
            (rel, st.st_size, st.st_mtime_ns) for rel, st in scanned)
        return Listing(resolved, select(files, self.patterns))

    async def fetch(self, file: RemoteFile, dest: Path, progress: Progress) -> None:
        src = self.root / file.path
        try:
            await _copy_in_thread(lambda: open(src, "rb"), dest, file.size, progress)  # noqa: SIM115
        except OSError as e:
            raise SourceError(f"{self.description}: {file.path}: {e}") from None


# -- HTTP(S) ---------------------------------------------------------------------------------

class _Transient(Exception):
    """A failure worth another try (a dropped connection, a 5xx, a short body)."""


class _NoRanges(Exception):
    """The server answered a part's Range request with the whole file."""


@dataclass(slots=True)
class _Part:
    start: int
    end: int  # exclusive
    done: int = 0

    @property
    def left(self) -> int:
        return self.end - self.start - self.done


class HttpFetcher:
    """Fetches one URL into a partial file: one resumable stream, or concurrent ranged parts
    for large files with their progress kept in a `<dest>.parts` sidecar. Retries each stream
    on transport errors and 5xx, resuming where it stopped."""

    def __init__(self, description: str, token: str = "") -> None:
        self.description = description
        self.token = token
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}

    def _client(self) -> httpx.AsyncClient:
        return httpx.AsyncClient(headers=self.headers, follow_redirects=True, timeout=TIMEOUT)

    def error(self, what: str, why: object) -> SourceError:
        return SourceError(_scrub(f"{self.description}: {what}: {why}", self.token))

    async def get(self, url: str, what: str) -> bytes:
        """A small body (the manifest), retried like a stream."""
        async with self._client() as client:
            for attempt in range(ATTEMPTS):
                try:
                    response = await client.get(url)
                    self._check(response, what)
                    return response.content
                except (httpx.TransportError, _Transient) as e:
                    if attempt == ATTEMPTS - 1:
                        raise self.error(what, e) from None
                    await asyncio.sleep(BACKOFF_S * 2**attempt)
        raise AssertionError("unreachable")

    def _check(self, response: httpx.Response, what: str) -> None:
        code = response.status_code
        if code in (401, 403):
            raise self.error(what, f"HTTP {code}: token refused or missing")
        if code >= 500:
            raise _Transient(f"HTTP {code}")
        if code >= 400 and code != 416:
            raise self.error(what, f"HTTP {code}")

    async def fetch(self, url: str, what: str, size: int, dest: Path,
                    progress: Progress) -> None:
        sidecar = dest.with_suffix(dest.suffix + ".parts")
        async with self._client() as client:
            if size >= PARALLEL_MIN:
                try:
                    await self._fetch_parts(client, url, what, size, dest, sidecar, progress)
                    return
                except _NoRanges:
                    sidecar.unlink(missing_ok=True)
                    dest.unlink(missing_ok=True)  # the parts layout is void: one stream
            have = dest.stat().st_size if dest.exists() else 0
            part = _Part(0, size, have if have <= size else 0)
            fd = os.open(dest, os.O_WRONLY | os.O_CREAT)
            try:
                os.ftruncate(fd, part.done)
                await self._retrying(client, url, what, part, fd, progress, whole=True)
            finally:
                os.close(fd)

    async def _fetch_parts(self, client: httpx.AsyncClient, url: str, what: str, size: int,
                           dest: Path, sidecar: Path, progress: Progress) -> None:
        parts = _load_parts(sidecar, size)
        if parts is None:  # none kept: what dest holds is a prefix (a single-stream try)
            have = dest.stat().st_size if dest.exists() else 0
            have = have if have <= size else 0
            parts = [_Part(a, b, max(0, min(b, have) - a)) for a, b in plan_parts(size)]
        _save_parts(sidecar, size, parts)  # before pre-sizing: a full-size dest is never bare
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT)
        try:
            os.ftruncate(fd, size)
            save = lambda: _save_parts(sidecar, size, parts)
            async with asyncio.TaskGroup() as group:
                for part in parts:
                    if part.left:
                        group.create_task(self._retrying(client, url, what, part, fd,
                                                         progress, whole=False, save=save))
        except ExceptionGroup as failed:
            raise failed.exceptions[0] from None
        finally:
            os.close(fd)
        sidecar.unlink(missing_ok=True)

    async def _retrying(self, client: httpx.AsyncClient, url: str, what: str, part: _Part,
                        fd: int, progress: Progress, whole: bool,
                        save: Callable[[], None] = lambda: None) -> None:
        failures = 0
        while part.left:
            before = part.done
            try:
                await self._stream(client, url, what, part, fd, progress, whole, save)
                if part.left:
                    raise _Transient(f"body ended {part.left} bytes short")
            except (httpx.TransportError, _Transient) as e:
                failures = 0 if part.done > before else failures + 1
                if failures >= ATTEMPTS:
                    raise self.error(what, f"gave up after {ATTEMPTS} tries: {e!r}") from None
                await asyncio.sleep(BACKOFF_S * 2 ** max(0, failures - 1))

    async def _stream(self, client: httpx.AsyncClient, url: str, what: str, part: _Part,
                      fd: int, progress: Progress, whole: bool,
                      save: Callable[[], None]) -> None:
        """One GET of what the part still lacks, written at its offset as it arrives."""
        offset = part.start + part.done
        headers = {}
        if not whole:
            headers["Range"] = f"bytes={offset}-{part.end - 1}"
        elif offset:
            headers["Range"] = f"bytes={offset}-"
        async with client.stream("GET", url, headers=headers) as response:
            self._check(response, what)
            code = response.status_code
            if code == 416 or (code == 200 and offset):
                if not whole:
                    raise _NoRanges()
                part.done = 0  # the server will not resume this file: start over
                os.ftruncate(fd, 0)
                if code == 416:
                    raise _Transient("HTTP 416 on resume")
            elif code == 206 and not response.headers.get("Content-Range", "").startswith(
                    f"bytes {offset}-"):
                raise self.error(what, f"Content-Range {response.headers.get('Content-Range')}"
                                       f" does not start at {offset}")
            buffer = bytearray()
            try:
                async for chunk in response.aiter_bytes():
                    buffer += chunk[: part.left - len(buffer)]
                    if len(buffer) >= FLUSH_BYTES or len(buffer) == part.left:
                        data, buffer = bytes(buffer), bytearray()
                        await _write(fd, part, data, progress)
                        save()
                    if not part.left:
                        break
            finally:  # keep what arrived before a drop or a cancel: the retry resumes after it
                if buffer:
                    _put(fd, part, bytes(buffer))
                    progress(len(buffer))
                save()


async def _write(fd: int, part: _Part, data: bytes, progress: Progress) -> None:
    """_put in a thread. A cancel waits for the write in flight (the fd must outlive it) and
    counts it before it goes on."""
    write = asyncio.ensure_future(asyncio.to_thread(_put, fd, part, data))
    try:
        await asyncio.shield(write)
    except asyncio.CancelledError:
        await write
        progress(len(data))
        raise
    progress(len(data))


def _put(fd: int, part: _Part, data: bytes) -> None:
    """Write data at the part's next offset (blocking) and count it done."""
    view = memoryview(data)
    while view:
        written = os.pwrite(fd, view, part.start + part.done)
        part.done += written
        view = view[written:]


def _load_parts(sidecar: Path, size: int) -> list[_Part] | None:
    try:
        doc = json.loads(sidecar.read_text())
        if doc["size"] != size:
            return None
        return [_Part(int(a), int(b), int(d)) for a, b, d in doc["parts"]]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _save_parts(sidecar: Path, size: int, parts: list[_Part]) -> None:
    tmp = sidecar.with_name(sidecar.name + ".tmp")
    tmp.write_text(json.dumps({"size": size, "parts": [[p.start, p.end, p.done] for p in parts]}))
    os.replace(tmp, sidecar)


class HttpSource:
    """An HTTP(S) directory: the listing is `<base>/basalt-manifest.json` (see write_manifest);
    files are `<base>/<path>`, fetched with the bearer token when one is given."""

    def __init__(self, base_url: str, revision: str = "", patterns: Iterable[str] = (),
                 token: str = "") -> None:
        self.base = base_url.rstrip("/")
        parts = urlsplit(self.base)
        netloc = parts.netloc.rpartition("@")[2]  # never show credentials
        self.description = parts._replace(netloc=netloc).geturl()
        self.revision = revision
        self.patterns = list(patterns)
        self.http = HttpFetcher(self.description, token)

    def url(self, path: str) -> str:
        return f"{self.base}/{quote(path)}"

    async def list(self) -> Listing:
        raw = await self.http.get(self.url(MANIFEST), MANIFEST)
        revision, files = _parse_manifest(raw, self.description)
        return Listing(self.revision or revision, select(files, self.patterns))

    async def fetch(self, file: RemoteFile, dest: Path, progress: Progress) -> None:
        await self.http.fetch(self.url(file.path), file.path, file.size, dest, progress)


# -- Hugging Face Hub ------------------------------------------------------------------------

def hub_files(siblings: Iterable[Any]) -> list[RemoteFile]:
    """The Hub's `model_info(..., files_metadata=True).siblings` as RemoteFiles (pure): size,
    and sha256 for files in LFS (others have only a git blob id, not a sha256)."""
    files = []
    for s in siblings:
        if s.size is None:
            raise SourceError(f"hub file {s.rfilename}: no size (files_metadata not asked?)")
        lfs = getattr(s, "lfs", None)
        files.append(RemoteFile(s.rfilename, int(s.size), getattr(lfs, "sha256", "") or ""))
    return files


def hub_file_url(repo_id: str, path: str, revision: str) -> str:
    """The URL of one file at one commit (honours HF_ENDPOINT)."""
    return hf_hub_url(repo_id, path, revision=revision)


class HubSource:
    """A Hugging Face Hub model repo. UNVERIFIED: no network where this was written; only the
    pure helpers (hub_files, hub_file_url) are tested. Files are fetched from the commit the
    last list() resolved, by the HTTP fetcher with the token as bearer."""

    def __init__(self, repo_id: str, revision: str = "", patterns: Iterable[str] = (),
                 token: str = "") -> None:
        self.repo_id = repo_id
        self.revision = revision or "main"
        self.resolved = ""
        self.patterns = list(patterns)
        self.token = token
        self.description = f"hf://{repo_id}@{self.revision}"
        self.http = HttpFetcher(self.description, token)

    async def list(self) -> Listing:
        def info() -> Any:
            return HfApi().model_info(self.repo_id, revision=self.revision,
                                      files_metadata=True, token=self.token or None)
        try:
            model = await asyncio.to_thread(info)
        except Exception as e:  # noqa: BLE001 - the hub client's: not found, gated, network
            raise self.http.error("listing", f"{type(e).__name__}: {e}") from None
        self.resolved = str(model.sha)
        return Listing(self.resolved, select(hub_files(model.siblings or []), self.patterns))

    async def fetch(self, file: RemoteFile, dest: Path, progress: Progress) -> None:
        url = hub_file_url(self.repo_id, file.path, self.resolved or self.revision)
        await self.http.fetch(url, file.path, file.size, dest, progress)


# -- fsspec stores ---------------------------------------------------------------------------

class FsspecSource:
    """Any fsspec store (`memory://`, `s3://`, `gs://`, ...); credentials come from the store's
    own chain (environment, instance role), not the token. Cloud buckets are UNVERIFIED here."""

    def __init__(self, uri: str, revision: str = "", patterns: Iterable[str] = ()) -> None:
        self.description = uri
        try:
            self.fs, self.root = fsspec.url_to_fs(uri)
        except ImportError as e:  # fsspec's message names the package, e.g. "Install s3fs"
            raise SourceError(f"{uri}: {e}") from None
        except ValueError as e:
            raise SourceError(f"{uri}: {e}") from None
        self.root = self.root.rstrip("/")
        self.revision = revision
        self.patterns = list(patterns)

    async def list(self) -> Listing:
        try:
            found = await asyncio.to_thread(self.fs.find, self.root, detail=True)
        except Exception as e:  # noqa: BLE001 - each store raises its own (auth, network)
            raise SourceError(f"{self.description}: listing: {e}") from None
        entries = []
        for name, info in found.items():
            if info.get("type", "file") == "file":
                version = info.get("ETag") or info.get("etag") or info.get("mtime") or ""
                entries.append((posixpath.relpath(name, self.root), int(info["size"]), version))
        resolved = self.revision or fingerprint(entries)
        return Listing(resolved, select((RemoteFile(p, s, "") for p, s, _ in entries),
                                        self.patterns))

    async def fetch(self, file: RemoteFile, dest: Path, progress: Progress) -> None:
        path = f"{self.root}/{file.path}"
        try:
            await _copy_in_thread(lambda: self.fs.open(path, "rb"), dest, file.size, progress)
        except Exception as e:  # noqa: BLE001 - each store raises its own (auth, network)
            raise SourceError(f"{self.description}: {file.path}: {e}") from None


# -- choosing one ----------------------------------------------------------------------------

def open_source(source: deploy_pb2.WeightsSource, token: str = "") -> Source:
    """The source a WeightsSource names: an absolute path or file:// (local), http(s)://,
    hf://<repo_id>, or any other fsspec URL. `token` is the value of its token_secret."""
    uri, rev, patterns = source.uri.strip(), source.revision, list(source.allow_patterns)
    if uri.startswith("file://"):
        parts = urlsplit(uri)
        if parts.netloc not in ("", "localhost"):
            raise SourceError(f"{uri}: file:// URIs name this host only")
        return LocalSource(Path(unquote(parts.path)), rev, patterns)
    if uri.startswith("/"):
        return LocalSource(Path(uri), rev, patterns)
    if uri.startswith(("http://", "https://")):
        return HttpSource(uri, rev, patterns, token)
    if uri.startswith("hf://"):
        repo_id = uri.removeprefix("hf://").strip("/")
        if repo_id.count("/") > 1 or not repo_id:
            raise SourceError(f"{uri}: expected hf://<owner>/<name>")
        return HubSource(repo_id, rev, patterns, token)
    if "://" in uri:
        return FsspecSource(uri, rev, patterns)
    raise SourceError(f"{uri!r}: not an absolute path or a URL")

