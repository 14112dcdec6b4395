"""The vLLM settings the tests and benchmarks start vLLM's CPU build with (no I/O): what
deploy/local/tiny.yaml sets, since basalt's runtime adds no CPU-friendly defaults of its own.

enforce_eager: no torch.compile or graph capture (on CPU, compiling costs far more than a
test's or a benchmark's few requests gain); max_lora_rank 8: LoRA buffers sized for the tiny
adapter.
"""

from __future__ import annotations

import json
from typing import Any

CPU_SETTINGS: dict[str, Any] = {"enforce_eager": True, "max_lora_rank": 8}

# The same, as runtime flags (`python -m services.runtime --engine vllm ...`).
CPU_FLAGS = ["--engine-settings-json", json.dumps(CPU_SETTINGS)]
