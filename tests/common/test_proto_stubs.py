"""The committed Python stubs match what grpcio-tools generates from proto/ today."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROTOS = sorted((REPO / "proto" / "basalt" / "pb").glob("*.proto"))


def test_every_proto_has_committed_stubs() -> None:
    assert PROTOS, "no .proto files found"
    for proto in PROTOS:
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (REPO / "basalt" / "pb" / f"{proto.stem}{suffix}").exists(), proto


def test_stubs_do_not_drift_from_proto(tmp_path: Path) -> None:
    cmd = [
        sys.executable, "-m", "grpc_tools.protoc", "-I", str(REPO / "proto"),
        f"--python_out={tmp_path}", f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}",
        *map(str, PROTOS),
    ]
    subprocess.run(cmd, check=True)
    drifted = []
    for fresh in sorted((tmp_path / "basalt" / "pb").iterdir()):
        committed = REPO / "basalt" / "pb" / fresh.name
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            drifted.append(fresh.name)
    assert not drifted, f"stubs out of date, run `make proto`: {drifted}"


def test_kserve_service_matches_the_public_spec_names() -> None:
    from basalt.pb import kserve_pb2

    svc = kserve_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert svc.full_name == "inference.GRPCInferenceService"
    infer = kserve_pb2.ModelInferRequest.DESCRIPTOR
    assert {f.name: f.number for f in infer.fields} == {
        "model_name": 1, "model_version": 2, "id": 3, "parameters": 4,
        "inputs": 5, "outputs": 6, "raw_input_contents": 7,
    }
