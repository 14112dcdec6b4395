"""The tokenizer of each deployment's model, loaded once from its files (does file I/O)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from basalt.pb import deploy_pb2
from basalt.tokenizer import ByteTokenizer, load_tokenizer


class Tokenizers:
    def __init__(self) -> None:
        self._by_path: dict[str, Any] = {}
        self._bytes = ByteTokenizer()

    def for_deployment(self, dep: deploy_pb2.DeploymentRecord) -> Any:
        """The model's own tokenizer; a byte tokenizer for models with no tokenizer files
        (the simulator), matching what the runtime does."""
        path = dep.spec.model_path
        if not path or not (Path(path) / "tokenizer.json").exists():
            return self._bytes
        found = self._by_path.get(path)
        if found is None:
            found = self._by_path[path] = load_tokenizer(path)
        return found

    async def get(self, dep: deploy_pb2.DeploymentRecord) -> Any:
        """`for_deployment`, loading a model's tokenizer in a thread the first time, so the
        event loop (and every stream on it) does not stall for the load."""
        path = dep.spec.model_path
        if path in self._by_path or not path or not (Path(path) / "tokenizer.json").exists():
            return self.for_deployment(dep)
        return await asyncio.to_thread(self.for_deployment, dep)
