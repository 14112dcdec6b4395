"""The router's settings: flags and BASALT_ROUTER_* environment variables (no I/O)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from basalt.config import ServiceSettings

# The router's /metrics port unless --metrics-port says otherwise (worker i: this + i).
DEFAULT_METRICS_PORT = 9101


class RouterSettings(ServiceSettings):
    """OpenAI HTTP and KServe v2 gRPC front doors; KV-, LoRA-, region- and load-aware routing."""

    model_config = SettingsConfigDict(
        env_prefix="BASALT_ROUTER_", cli_kebab_case=True, cli_implicit_flags=True,
        extra="forbid", cli_avoid_json=True,
    )

    http_host: str = Field("127.0.0.1", description="Address of the OpenAI-compatible HTTP server.")
    http_port: int = Field(8000, ge=0, le=65535, description="Port of the HTTP server.")
    grpc_host: str = Field("127.0.0.1", description="Address of the KServe v2 gRPC server.")
    grpc_port: int = Field(8001, ge=0, le=65535, description="Port of the KServe v2 gRPC server (0 = any free port).")
    max_body_bytes: int = Field(8 * 2**20, ge=1024, description="Largest HTTP request body accepted; larger ones get 413.")
    region: str = Field("local", description="This router's region; used when a request names none.")
    region_header: str = Field("x-basalt-region", description="Header carrying the client's region.")
    session_header: str = Field("x-session-id", description="Header carrying the session key for the `session` policy.")
    deployments_file: str = Field("", description="YAML deployments file to serve besides the control plane's deployments.")
    auth: bool = Field(False, description="Require an API key (`basalt keys create`) on every route but /health.")
    replica_secret_file: str = Field("", description="The platform secret (0600 file) the replicas' credentials derive from, the control plane's same file: calls to a replica carry its credential, and replica records, load reports and KV events not signed by the replica they name are dropped. Empty: neither (loopback tests only).")
    max_streams_per_connection: int = Field(100, ge=1, le=10_000, description="KServe gRPC door: concurrent calls per HTTP/2 connection.")
    index_max_blocks_per_replica: int = Field(1 << 18, ge=1, description="Most KV blocks the prefix index holds per replica; past it the oldest are evicted.")
    overlap_weight: float = Field(4.0, ge=0, description="kv policy: cost of one block to prefill, relative to one block of decode load.")
    busy_kv_usage: float = Field(0.95, gt=0, le=1, description="A replica with KV usage above this takes no new requests.")
    busy_waiting: int = Field(32, ge=0, description="A replica with more waiting requests than this takes no new requests.")
    lora_load_penalty: float = Field(1024.0, ge=0, description="kv policy: block-equivalents charged when the LoRA adapter is not loaded.")
    region_penalty_per_ms: float = Field(8.0, ge=0, description="kv policy: block-equivalents per ms of client-to-replica latency.")
    remote_region_ms: float = Field(50.0, ge=0, description="Assumed latency to a replica in another region, in ms.")
    seed: int = Field(0, description="Seed for the random policy and for the prefix index's own block hash (routers that share a seed hash prompts alike; the hash is internal to each router).")
    tokenize_process_chars: int = Field(32_768, ge=0, description="Prompts of at least this many characters are tokenized in a helper process, so the event loop never waits on the tokenizer's GIL-held work (0: always in a thread).")
    workers: int = Field(1, ge=1, le=64, description="Router processes serving the same HTTP and gRPC ports (SO_REUSEPORT); each builds its own index from the same events. 1: this process serves.")
    worker_index: int = Field(-1, ge=-1, description="Set by the supervisor on each worker (its ports are shared; responses carry x-basalt-router-worker). -1: not a worker.")
    ready_file: str = Field("", description="Write the bound ports and the metrics address as JSON to this file once serving (for scripts).")
    metrics_port: int = Field(DEFAULT_METRICS_PORT, ge=0, le=65535, description=f"Port of the router's Prometheus /metrics server ({DEFAULT_METRICS_PORT} by default, so a scrape config can name it; 0 = any free port, as tests use). With --workers N each worker serves its own: this port + its index ({DEFAULT_METRICS_PORT}..{DEFAULT_METRICS_PORT}+N-1); with 0, each a free port.")
    access_log: bool = Field(True, description="One structured log line (event `access`) per HTTP request once answered: request id, route, status, outcome, model, deployment, replica, key id, tokens, queue wait, TTFT, total time; never the prompt or the key. --no-access-log: none.")
