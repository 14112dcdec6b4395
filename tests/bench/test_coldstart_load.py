"""Cold-start load benchmark on a 32 MiB random Llama: valid files, same bytes from every loader."""

from __future__ import annotations

import json
import math
from itertools import pairwise
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from bench import coldstart_gpu as gpu
from bench import coldstart_load as cl

GIB = 1 / 32
SHARD = 12 << 20


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return cl.build_model(tmp_path_factory.mktemp("coldstart") / "llama", GIB, shard_bytes=SHARD)


@pytest.fixture(scope="module")
def reference(model: Path) -> str:
    """The checksum of the tensors as safetensors itself reads them."""
    tensors = {k: v for p in cl.shard_files(model) for k, v in load_file(str(p)).items()}
    return cl.checksum({k: v.clone() for k, v in tensors.items()})


def test_the_built_model_is_sharded_safetensors_with_llama_shapes(model: Path) -> None:
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["architectures"] == ["LlamaForCausalLM"]
    expected = {s.name: s.shape for s in cl.llama_tensors(cfg)}
    index = json.loads((model / cl.INDEX_NAME).read_text())
    assert set(index["weight_map"]) == set(expected)
    files = cl.shard_files(model)
    assert len(files) > 1
    assert all(p.stat().st_size <= SHARD + (1 << 16) for p in files)
    seen: dict[str, tuple[int, ...]] = {}
    for path in files:
        with safe_open(str(path), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118
                t = f.get_tensor(name)
                assert t.dtype == torch.bfloat16 and torch.isfinite(t).all()
                assert index["weight_map"][name] == path.name
                seen[name] = tuple(t.shape)
    assert seen == expected
    total = sum(math.prod(s) * 2 for s in expected.values())
    assert index["metadata"]["total_size"] == total >= GIB * (1 << 30)


def test_a_finished_build_is_reused(model: Path) -> None:
    before = [p.stat().st_mtime_ns for p in cl.shard_files(model)]
    cl.build_model(model, GIB, shard_bytes=SHARD)
    assert [p.stat().st_mtime_ns for p in cl.shard_files(model)] == before


def test_the_2_gib_plan_is_tinyllama_sized() -> None:
    cfg = cl.llama_config(2.0)
    total = sum(s.nbytes for s in cl.llama_tensors(cfg))
    assert cfg["hidden_size"] == 2048 and cfg["num_hidden_layers"] == 22
    assert 2 << 30 <= total < (2 << 30) + (100 << 20)
    assert all(sum(s.nbytes for s in shard) <= cl.SHARD_BYTES
               for shard in cl.plan_shards(cl.llama_tensors(cfg), cl.SHARD_BYTES))


def test_read_plan_covers_each_byte_once_in_file_order(model: Path) -> None:
    _, segs = cl.read_segments(cl.shard_files(model)[0])
    reads = cl.plan_reads(segs, chunk=1 << 20)
    pieces = [(s.begin + lo, s.begin + hi) for r in reads for s, lo, hi in r]
    assert pieces[0][0] == segs[0].begin and pieces[-1][1] == segs[-1].end
    assert all(a[1] == b[0] for a, b in pairwise(pieces))
    assert all(sum(hi - lo for _, lo, hi in r) <= 1 << 20 and len(r) <= cl.IOV_MAX
               for r in reads)


@pytest.mark.parametrize("tier", ["cold", "warm"])
@pytest.mark.parametrize("name", list(cl.available_loaders()))
def test_every_loader_fills_the_parameters_with_safetensors_bytes(
        model: Path, reference: str, name: str, tier: str) -> None:
    files = cl.shard_files(model)
    params = cl.allocate_params(files)
    seconds = cl.time_load(cl.available_loaders()[name], files, params, tier)
    assert seconds > 0
    assert cl.checksum(params) == reference


def test_the_limits_are_measured_and_the_page_cache_drop_takes(model: Path) -> None:
    files = cl.shard_files(model)
    limits = cl.machine_limits(files, threads=2, memcpy_bytes=16 << 20)
    assert limits["seq_read_bytes"] == sum(p.stat().st_size for p in files)
    assert limits["seq_read_bytes_per_s"] > 0 and limits["memcpy_bytes_per_s"] > 0
    if cl.resident_bytes(files[0]) is not None:
        assert limits["resident_after_drop_bytes"] == 0


def test_the_markdown_has_a_row_per_loader(model: Path) -> None:
    files = cl.shard_files(model)
    limits = {"seq_read_bytes_per_s": 1e9, "memcpy_bytes_per_s": 1e10}
    rows = list(cl.iter_runs(files, limits, threads=2, repeats=1))
    assert {(r["loader"], r["tier"]) for r in rows} == {
        (n, t) for n in cl.available_loaders() for t in ("cold", "warm")}
    assert all(r["bytes_per_s"] > 0 and r["share_of_limit"] > 0 for r in rows)
    text = cl.markdown(rows, limits)
    body = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line]
    for name in cl.LOADERS:
        assert sum(line.startswith(f"| {name} |") for line in body) == (
            2 if name in cl.available_loaders() else 1)
    assert "cores" in text.splitlines()[0]


def test_the_gpu_ring_loader_on_cpu_gives_safetensors_bytes(model: Path, reference: str) -> None:
    files = cl.shard_files(model)
    loader = gpu.RingLoader("cpu", ring=2, chunk=3 << 20, threads=2)
    params = loader.allocate(files)
    loader.load(files, params)
    assert cl.checksum(params) == reference


def test_gpu_chunks_cover_each_tensor_byte_once(model: Path) -> None:
    heads = [gpu.read_header(p) for p in cl.shard_files(model)]
    chunks = gpu.plan_chunks([(o, [(n, b, e) for n, _, b, e in rows]) for o, rows in heads],
                             1 << 20)
    got: dict[str, int] = {}
    for c in chunks:
        assert c.length <= 1 << 20 and sum(p.n for p in c.pieces) == c.length
        for p in c.pieces:
            assert p.dst_lo == got.get(p.name, 0)
            got[p.name] = p.dst_lo + p.n
    assert got == {n: e - b for _, rows in heads for n, _, b, e in rows}


def test_the_gpu_script_says_what_it_lacks_without_cuda(tmp_path: Path) -> None:
    if torch.cuda.is_available():
        pytest.skip("needs a host without CUDA: this checks what the GPU script says when it "
                    "finds none")
    assert gpu.main(["--gib", "0.01", "--out", str(tmp_path)]) == 2
    assert gpu.lacking() == ["a CUDA device (torch.cuda.is_available())"]
