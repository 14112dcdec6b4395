"""The router's tokenizers load once, off the event loop, even when requests race for them."""

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import asyncio, sys
from basalt.pb import deploy_pb2
from services.router.tokenizers import Tokenizers

async def main():
    toks = Tokenizers()
    dep = deploy_pb2.DeploymentRecord(spec=deploy_pb2.DeploymentSpec(model_path=sys.argv[1]))
    got = await asyncio.gather(*(toks.get(dep) for _ in range(6)))
    assert len({id(t) for t in got}) == 1, "loaded more than once"
    assert got[0].encode("hello") and got[0].vocab_size == 1000
    none = deploy_pb2.DeploymentRecord(spec=deploy_pb2.DeploymentSpec(model_path=""))
    assert (await toks.get(none)).vocab_size == 259  # no files: the runtime's byte tokenizer

asyncio.run(main())
print("ok")
"""


def test_racing_first_requests_share_one_load(tiny_model: Path) -> None:
    # A fresh process: the race is on transformers' first import, which this one has done.
    out = subprocess.run([sys.executable, "-c", SCRIPT, str(tiny_model)], capture_output=True,
                         text=True, timeout=120, check=False,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "ok", out.stderr[-2000:]
