"""The runtime's settings: flags and BASALT_RUNTIME_* environment variables (no I/O)."""

from __future__ import annotations

import enum
from typing import Any

from pydantic import Field, field_validator
from pydantic_settings import SettingsConfigDict

from basalt.config import ServiceSettings
from basalt.engine_settings import parse_engine_settings


class EngineKind(str, enum.Enum):
    VLLM = "vllm"
    TRTLLM = "trtllm"
    SIM = "sim"
    PYTHON = "python"


class RuntimeSettings(ServiceSettings):
    """One replica: one model in one engine, served over gRPC, KV events on NATS."""

    model_config = SettingsConfigDict(
        env_prefix="BASALT_RUNTIME_",
        cli_kebab_case=True,
        cli_implicit_flags=True,
        extra="forbid",
        cli_avoid_json=True,
    )

    engine: EngineKind = Field(EngineKind.SIM, description="Engine: vllm, trtllm, sim (a simulator) or python (Truss-style model).")
    model: str = Field("", description="Model directory (HF files for vllm/trtllm, a Truss-style dir for python; optional for sim: its tokenizer is used).")
    weights_dir: str = Field("", description="Directory holding the weights in the node cache (the control plane sets it for a python engine; for vllm/trtllm/sim --model is that directory).")
    warm_weights: bool = Field(True, description="Before the engine starts, read the weight files into host memory (the page cache) with large parallel reads, so the engine's own load reads from memory; skipped when they would not fit.")
    model_name: str = Field("", description="Name the model is served under (default: the model directory's name, or 'sim-model').")
    deployment: str = Field("default", description="Deployment this replica belongs to.")
    replica_id: str = Field("", description="Replica id (default: <deployment>-<random>).")
    owner: str = Field("", description="Owner id of whoever started this replica (the control plane sets it).")
    grpc_host: str = Field("127.0.0.1", description="Address the gRPC server binds.")
    grpc_port: int = Field(0, ge=0, le=65535, description="gRPC port (0 = any free port).")
    advertise_host: str = Field("", description="Host put in the replica record (default: grpc-host).")
    region: str = Field("local", description="Region label in the replica record.")
    zone: str = Field("local-a", description="Zone label in the replica record.")
    cluster: str = Field("local", description="Cluster label in the replica record.")
    lora_modules: list[str] = Field(default_factory=list, description="LoRA adapters to load at start, NAME=PATH, repeatable.")
    block_size: int | None = Field(None, gt=0, le=256, description="KV-cache block size in tokens (default: the engine's; 16 for sim, 32 for vLLM on CPU).")
    max_model_len: int = Field(1024, gt=0, description="Longest prompt + output the engine accepts, in tokens.")
    max_num_seqs: int = Field(64, gt=0, description="Most sequences the engine runs at once.")
    gpu_memory_utilization: float = Field(0.2, gt=0.0, le=1.0, description="vLLM: share of accelerator memory (share of RAM on the CPU build).")
    kv_cache_bytes: int | None = Field(None, gt=0, description="vLLM: KV-cache size in bytes (overrides gpu-memory-utilization's share).")
    sim_num_blocks: int = Field(4096, gt=0, description="Simulator: KV blocks in the simulated cache.")
    sim_time_scale: float = Field(1.0, gt=0.0, description="Simulator: wall seconds per simulated second (0.01 = 100x faster).")
    sim_seed: int = Field(0, description="Simulator: seed for output tokens and jitter.")
    heartbeat_interval: float = Field(2.0, gt=0.0, description="Seconds between replica-record refreshes in NATS KV.")
    load_report_interval: float = Field(1.0, gt=0.0, description="Seconds between load reports on NATS.")
    kv_batch_interval: float = Field(0.02, gt=0.0, description="Longest wait before KV events are flushed to NATS as one batch.")
    drain_timeout: float = Field(30.0, ge=0.0, description="On SIGTERM, seconds to let in-flight requests finish before aborting them.")
    token: str = Field("", repr=False, description="This replica's credential: the gRPC server answers only callers sending it, and what the replica publishes is signed with it. Give it in BASALT_RUNTIME_TOKEN (the control plane does), not as a flag.")
    grpc_insecure: bool = Field(False, description="Allow listening off loopback without a credential.")
    lora_root: str = Field("", description="LoadLora accepts only adapter paths under this folder (empty: LoadLora is refused; adapters given at start are loaded).")
    ready_file: str = Field("", description="Write the replica record as JSON to this file once ready (for scripts).")
    engine_settings_json: str = Field("", description='The engine\'s own settings as one JSON object, under the engine\'s names, passed to it as given (vllm: AsyncEngineArgs, checked by vLLM\'s own parser, e.g. \'{"max_lora_rank": 16, "enforce_eager": true}\'; trtllm: LLM(**settings)). The control plane sets it from a deployment\'s engine_args; keys basalt sets itself (served_model_name, kv_events_config, enable_prefix_caching, ...) are refused.')

    @field_validator("engine_settings_json")
    @classmethod
    def _engine_settings_object(cls, v: str) -> str:
        parse_engine_settings(v)  # fails at start, with the flag's name, on a bad object
        return v

    def engine_settings(self) -> dict[str, Any]:
        """--engine-settings-json as a dict ({} when not given)."""
        return parse_engine_settings(self.engine_settings_json)

    def lora_map(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for item in self.lora_modules:
            name, sep, path = item.partition("=")
            if not sep or not name or not path:
                raise ValueError(f"--lora-modules expects NAME=PATH, got {item!r}")
            out[name] = path
        return out

    def weights_root(self) -> str:
        """Where the weight files lie: --weights-dir for a python engine that has one, else
        --model ("" for a sim without a model)."""
        if self.engine is EngineKind.PYTHON and self.weights_dir:
            return self.weights_dir
        return self.model
