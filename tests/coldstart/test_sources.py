"""The weight sources against real files, a real HTTP server on a free port and fsspec's memory
store; the Hub only through its pure helpers (no network here)."""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import fsspec
import pytest

from basalt.pb import deploy_pb2
from services.coldstart.sources import (
    MANIFEST,
    PARALLEL_MIN,
    FsspecSource,
    HttpSource,
    HubSource,
    LocalSource,
    RemoteFile,
    SourceError,
    fingerprint,
    hub_file_url,
    hub_files,
    open_source,
    plan_parts,
    select,
    write_manifest,
)
from tests.coldstart.httpserver import TestHTTPServer

BIG = 70 << 20  # above PARALLEL_MIN: fetched in ranged parts


def _ws(uri: str, revision: str = "", patterns: tuple[str, ...] = ()) -> deploy_pb2.WeightsSource:
    return deploy_pb2.WeightsSource(uri=uri, revision=revision, allow_patterns=list(patterns))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class Counter:
    def __init__(self) -> None:
        self.total = 0

    def __call__(self, n: int) -> None:
        self.total += n


@pytest.fixture
def model_dir(tmp_path: Path) -> Path:
    """A small model folder: two files at the top, one nested, one in a dot-directory."""
    root = tmp_path / "model"
    (root / "sub").mkdir(parents=True)
    (root / ".git").mkdir()
    (root / "config.json").write_bytes(b'{"layers": 2}')
    (root / "model.safetensors").write_bytes(os.urandom(3 << 20))
    (root / "sub" / "tokenizer.json").write_bytes(b"{}" * 100)
    (root / ".git" / "HEAD").write_bytes(b"ref: main")
    return root


@pytest.fixture
def big_dir(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG))
    write_manifest(root)
    return root


@pytest.fixture
def served(model_dir: Path) -> Iterator[TestHTTPServer]:
    write_manifest(model_dir)
    with TestHTTPServer(model_dir) as server:
        yield server


# -- pure helpers ---------------------------------------------------------------------------

def test_plan_parts_covers_the_file_in_large_contiguous_parts() -> None:
    parts = plan_parts(BIG)
    assert parts[0][0] == 0 and parts[-1][1] == BIG
    assert all(a[1] == b[0] for a, b in itertools.pairwise(parts))
    assert 2 <= len(parts) <= 8 and all(end - start >= 16 << 20 for start, end in parts)
    assert len(plan_parts(1 << 30)) == 8


def test_select_filters_by_glob_and_sorts() -> None:
    files = [RemoteFile("b.safetensors", 1, ""), RemoteFile("a.json", 1, ""),
             RemoteFile("sub/c.safetensors", 1, "")]
    assert [f.path for f in select(files, [])] == ["a.json", "b.safetensors", "sub/c.safetensors"]
    assert [f.path for f in select(files, ["*.safetensors"])] == [
        "b.safetensors", "sub/c.safetensors"]  # fnmatch's * crosses "/"


def test_fingerprint_changes_with_any_size_or_version() -> None:
    base = fingerprint([("a", 1, 10), ("b", 2, 20)])
    assert base == fingerprint([("b", 2, 20), ("a", 1, 10)])  # order does not matter
    assert len(base) == 16
    assert base != fingerprint([("a", 1, 11), ("b", 2, 20)])
    assert base != fingerprint([("a", 1, 10), ("b", 3, 20)])


def test_hub_siblings_become_remote_files() -> None:
    siblings = [
        SimpleNamespace(rfilename="config.json", size=13, lfs=None),
        SimpleNamespace(rfilename="model.safetensors", size=1 << 30,
                        lfs=SimpleNamespace(sha256="ab" * 32, size=1 << 30)),
    ]
    assert hub_files(siblings) == [RemoteFile("config.json", 13, ""),
                                   RemoteFile("model.safetensors", 1 << 30, "ab" * 32)]
    with pytest.raises(SourceError, match="no size"):
        hub_files([SimpleNamespace(rfilename="x", size=None, lfs=None)])


def test_hub_url_names_the_commit() -> None:
    url = hub_file_url("meta-llama/Llama-3.1-8B-Instruct", "sub dir/model.safetensors", "abc123")
    assert url.endswith("/meta-llama/Llama-3.1-8B-Instruct/resolve/abc123/sub%20dir/"
                        "model.safetensors")


def test_open_source_picks_by_uri(tmp_path: Path) -> None:
    assert isinstance(open_source(_ws(str(tmp_path))), LocalSource)
    local = open_source(_ws(f"file://{tmp_path}"))
    assert isinstance(local, LocalSource) and local.root == tmp_path
    http = open_source(_ws("https://user:pw@example.com/m/"), token="s3cret")
    assert isinstance(http, HttpSource) and http.description == "https://example.com/m"
    hub = open_source(_ws("hf://meta-llama/Llama-3.1-8B-Instruct"))
    assert isinstance(hub, HubSource) and hub.revision == "main"
    assert isinstance(open_source(_ws("memory://models/x")), FsspecSource)
    with pytest.raises(SourceError, match="relative|absolute"):
        open_source(_ws("models/x"))


def test_a_missing_fsspec_implementation_names_the_package() -> None:
    try:
        import s3fs  # noqa: F401
    except ImportError:
        with pytest.raises(SourceError, match="s3fs"):
            open_source(_ws("s3://bucket/model"))
    else:
        pytest.skip("needs a host without s3fs: this checks the message naming the package "
                    "to install")


# -- local directory ------------------------------------------------------------------------

async def test_local_lists_regular_files_but_not_dot_directories(model_dir: Path) -> None:
    listing = await open_source(_ws(str(model_dir))).list()
    assert [f.path for f in listing.files] == ["config.json", "model.safetensors",
                                               "sub/tokenizer.json"]
    assert [f.size for f in listing.files] == [13, 3 << 20, 200]
    assert all(f.sha256 == "" for f in listing.files)
    assert len(listing.resolved) == 16
    assert (await open_source(_ws(str(model_dir), revision="v1")).list()).resolved == "v1"
    (model_dir / "config.json").write_bytes(b'{"layers": 3}')
    assert (await open_source(_ws(str(model_dir))).list()).resolved != listing.resolved


async def test_local_takes_hashes_from_a_manifest_and_its_fingerprint(model_dir: Path) -> None:
    before = await open_source(_ws(str(model_dir))).list()
    write_manifest(model_dir)
    listing = await open_source(_ws(str(model_dir))).list()
    data = (model_dir / "model.safetensors").read_bytes()
    assert {f.path: f.sha256 for f in listing.files}["model.safetensors"] == _sha(data)
    assert MANIFEST not in [f.path for f in listing.files]
    assert listing.resolved == before.resolved  # the manifest does not change the revision
    doc = json.loads((model_dir / MANIFEST).read_text())
    assert doc["revision"] == listing.resolved


async def test_local_allow_patterns(model_dir: Path) -> None:
    source = open_source(_ws(str(model_dir), patterns=("*.json",)))
    assert [f.path for f in (await source.list()).files] == ["config.json", "sub/tokenizer.json"]


async def test_local_fetch_copies_and_resumes_a_partial_file(model_dir: Path,
                                                             tmp_path: Path) -> None:
    source = open_source(_ws(str(model_dir)))
    file = next(f for f in (await source.list()).files if f.path == "model.safetensors")
    data = (model_dir / file.path).read_bytes()
    dest = tmp_path / "out.partial"
    dest.write_bytes(data[:12345])  # an interrupted earlier copy
    counter = Counter()
    await source.fetch(file, dest, counter)
    assert dest.read_bytes() == data
    assert counter.total == len(data) - 12345  # only the new bytes
    dest.write_bytes(b"x" * (len(data) + 1))  # longer than the file: start over
    await source.fetch(file, dest, Counter())
    assert dest.read_bytes() == data


# -- HTTP -----------------------------------------------------------------------------------

@pytest.mark.integration
async def test_http_lists_the_manifest(served: TestHTTPServer, model_dir: Path) -> None:
    listing = await open_source(_ws(served.url, patterns=("*.safetensors", "*.json"))).list()
    assert [f.path for f in listing.files] == ["config.json", "model.safetensors",
                                               "sub/tokenizer.json"]
    for f in listing.files:
        data = (model_dir / f.path).read_bytes()
        assert (f.size, f.sha256) == (len(data), _sha(data))
    local = await open_source(_ws(str(model_dir))).list()
    assert listing.resolved == local.resolved  # one directory, one revision either way


@pytest.mark.integration
async def test_http_without_a_manifest_says_so(model_dir: Path) -> None:
    with TestHTTPServer(model_dir) as server, pytest.raises(SourceError, match="404") as info:
        await open_source(_ws(server.url)).list()
    assert MANIFEST in str(info.value)


@pytest.mark.integration
async def test_http_fetches_a_small_file_in_one_request(served: TestHTTPServer,
                                                        model_dir: Path, tmp_path: Path) -> None:
    source = open_source(_ws(served.url))
    file = next(f for f in (await source.list()).files if f.path == "sub/tokenizer.json")
    dest = tmp_path / "tok.partial"
    counter = Counter()
    await source.fetch(file, dest, counter)
    assert dest.read_bytes() == (model_dir / file.path).read_bytes()
    assert counter.total == file.size
    assert [r.range for r in served.requests if r.path == file.path] == [None]


@pytest.mark.integration
async def test_http_resumes_an_interrupted_transfer_with_a_range(served: TestHTTPServer,
                                                                 tmp_path: Path) -> None:
    source = open_source(_ws(served.url))
    file = next(f for f in (await source.list()).files if f.path == "model.safetensors")
    served.drop_after_bytes = 1_000_000
    dest = tmp_path / "m.partial"
    counter = Counter()
    await source.fetch(file, dest, counter)
    assert _sha(dest.read_bytes()) == file.sha256
    assert counter.total == file.size  # nothing counted twice
    assert [r.range for r in served.requests if r.path == file.path] == [None, "bytes=1000000-"]


@pytest.mark.integration
async def test_http_resumes_from_what_a_partial_file_holds(served: TestHTTPServer,
                                                           model_dir: Path,
                                                           tmp_path: Path) -> None:
    source = open_source(_ws(served.url))
    file = next(f for f in (await source.list()).files if f.path == "model.safetensors")
    dest = tmp_path / "m.partial"
    dest.write_bytes((model_dir / file.path).read_bytes()[:777])
    await source.fetch(file, dest, Counter())
    assert _sha(dest.read_bytes()) == file.sha256
    assert served.ranged(file.path) == ["bytes=777-"]


@pytest.mark.integration
async def test_http_keeps_going_when_every_response_is_cut(served: TestHTTPServer,
                                                           tmp_path: Path) -> None:
    source = open_source(_ws(served.url))
    file = next(f for f in (await source.list()).files if f.path == "model.safetensors")
    served.drop_after_bytes, served.drop_always = 1 << 20, True
    dest = tmp_path / "m.partial"
    await source.fetch(file, dest, Counter())
    assert _sha(dest.read_bytes()) == file.sha256
    assert served.ranged(file.path) == ["bytes=1048576-", "bytes=2097152-"]


@pytest.mark.integration
async def test_http_serves_corrupt_bytes_and_the_source_does_not_judge(
        served: TestHTTPServer, tmp_path: Path) -> None:
    source = open_source(_ws(served.url))
    file = next(f for f in (await source.list()).files if f.path == "config.json")
    served.corrupt.add("config.json")
    dest = tmp_path / "c.partial"
    await source.fetch(file, dest, Counter())
    assert len(dest.read_bytes()) == file.size and _sha(dest.read_bytes()) != file.sha256


@pytest.mark.integration
async def test_http_large_file_comes_in_parallel_ranged_parts(big_dir: Path,
                                                              tmp_path: Path) -> None:
    data = (big_dir / "big.bin").read_bytes()
    with TestHTTPServer(big_dir) as server:
        source = open_source(_ws(server.url))
        [file] = (await source.list()).files
        assert file.size >= PARALLEL_MIN
        dest = tmp_path / "big.partial"
        counter = Counter()
        await source.fetch(file, dest, counter)
    assert dest.read_bytes() == data and counter.total == BIG
    expected = [f"bytes={a}-{b - 1}" for a, b in plan_parts(BIG)]
    assert len(expected) > 1 and sorted(server.ranged("big.bin")) == sorted(expected)
    assert not dest.with_suffix(dest.suffix + ".parts").exists()


@pytest.mark.integration
async def test_http_parallel_parts_resume_after_a_cancel(big_dir: Path, tmp_path: Path) -> None:
    data = (big_dir / "big.bin").read_bytes()
    dest = tmp_path / "big.partial"
    with TestHTTPServer(big_dir) as server:
        source = open_source(_ws(server.url))
        [file] = (await source.list()).files
        halfway = asyncio.Event()
        counter = Counter()

        def progress(n: int) -> None:
            counter(n)
            if counter.total >= BIG // 3:
                halfway.set()

        task = asyncio.create_task(source.fetch(file, dest, progress))
        await halfway.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        sidecar = dest.with_suffix(dest.suffix + ".parts")
        kept = json.loads(sidecar.read_text())
        done_before = sum(d for _, _, d in kept["parts"])
        assert done_before >= BIG // 3
        first_round = len(server.requests)
        again = Counter()
        await source.fetch(file, dest, again)
    assert dest.read_bytes() == data
    assert again.total == BIG - done_before  # only what was missing
    resumed = [r.range for r in server.requests[first_round:] if r.range]
    expected = [f"bytes={a + d}-{b - 1}" for a, b, d in kept["parts"] if a + d < b]
    assert expected and sorted(resumed) == sorted(expected)  # each part from where it stopped
    assert not sidecar.exists()


@pytest.mark.integration
async def test_http_token_is_sent_and_a_wrong_one_is_refused_without_echo(
        served: TestHTTPServer, tmp_path: Path) -> None:
    served.require_token = "right-token"
    listing = await open_source(_ws(served.url), token="right-token").list()
    assert listing.files
    with pytest.raises(SourceError, match="token refused or missing") as info:
        await open_source(_ws(served.url), token="wrong-token-123").list()
    assert "wrong-token-123" not in str(info.value)
    with pytest.raises(SourceError, match="token refused or missing"):
        await open_source(_ws(served.url)).fetch(listing.files[0], tmp_path / "x", Counter())


# -- fsspec ---------------------------------------------------------------------------------

@pytest.fixture
def memory_model() -> Iterator[tuple[str, dict[str, bytes]]]:
    fs = fsspec.filesystem("memory")
    root = f"/models/{uuid.uuid4().hex}"
    files = {"config.json": b'{"a": 1}', "shards/model-1.bin": os.urandom(300_000)}
    for rel, data in files.items():
        fs.pipe(f"{root}/{rel}", data)
    yield f"memory://{root}", files
    fs.rm(root, recursive=True)


async def test_fsspec_memory_lists_and_fetches(memory_model: tuple[str, dict[str, bytes]],
                                               tmp_path: Path) -> None:
    uri, files = memory_model
    source = open_source(_ws(uri))
    listing = await source.list()
    assert [(f.path, f.size, f.sha256) for f in listing.files] == [
        (rel, len(data), "") for rel, data in sorted(files.items())]
    assert len(listing.resolved) == 16
    shard = listing.files[1]
    dest = tmp_path / "shard.partial"
    dest.write_bytes(files[shard.path][:1000])
    counter = Counter()
    await source.fetch(shard, dest, counter)
    assert dest.read_bytes() == files[shard.path]
    assert counter.total == shard.size - 1000
    only = await open_source(_ws(uri, revision="r1", patterns=("shards/*",))).list()
    assert only.resolved == "r1" and [f.path for f in only.files] == ["shards/model-1.bin"]
