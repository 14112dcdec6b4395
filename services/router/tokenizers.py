"""The tokenizer of each deployment's model, loaded once from its files (does file I/O)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from basalt.pb import deploy_pb2
from basalt.tokenizer import ByteTokenizer, load_tokenizer
from basalt.weights import local_path


def tokenizer_dir(dep: deploy_pb2.DeploymentRecord) -> str:
    """Where the router reads a deployment's tokenizer: its model folder, or the folder its
    weights come from when that is on this host. A remote weights source (HTTP, the Hub, a
    bucket) needs `model_path` naming a folder with the tokenizer files for now."""
    spec = dep.spec
    uri = spec.weights.uri if spec.HasField("weights") else ""
    local = local_path(uri)
    if spec.engine != "python" and spec.model_path:
        return spec.model_path
    return local or spec.model_path


class Tokenizers:
    def __init__(self) -> None:
        self._by_path: dict[str, Any] = {}
        self._bytes = ByteTokenizer()
        self._loading = asyncio.Lock()

    def for_deployment(self, dep: deploy_pb2.DeploymentRecord) -> Any:
        """The model's own tokenizer; a byte tokenizer for models with no tokenizer files
        (the simulator), matching what the runtime does."""
        path = tokenizer_dir(dep)
        found = self._by_path.get(path)
        if found is None:
            has_files = bool(path) and (Path(path) / "tokenizer.json").exists()
            found = self._by_path[path] = load_tokenizer(path) if has_files else self._bytes
        return found

    async def get(self, dep: deploy_pb2.DeploymentRecord) -> Any:
        """`for_deployment`, loading a model's tokenizer in a thread the first time, so the
        event loop (and every stream on it) does not stall for the load."""
        found = self._by_path.get(tokenizer_dir(dep))
        if found is not None:
            return found
        async with self._loading:  # one load at a time: transformers' first import is not
            return await asyncio.to_thread(self.for_deployment, dep)  # thread-safe
