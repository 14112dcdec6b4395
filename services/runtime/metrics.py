"""The runtime's Prometheus metrics: vLLM's as `basalt:x`, plus `basalt_runtime_*` (no I/O)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

LABELS = ["model", "replica"]

TTFT = Histogram(
    "basalt:time_to_first_token_seconds", "Time to first token, measured at the gRPC server.",
    LABELS, buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ITL = Histogram(
    "basalt:inter_token_latency_seconds", "Time between streamed chunks.",
    LABELS, buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1),
)
E2E = Histogram(
    "basalt:e2e_request_latency_seconds", "Request latency from arrival to last token.", LABELS
)
PROMPT_TOKENS = Counter("basalt:prompt_tokens", "Prompt tokens processed.", LABELS)
GENERATION_TOKENS = Counter("basalt:generation_tokens", "Tokens generated.", LABELS)
PREFIX_CACHE_HIT_TOKENS = Counter(
    "basalt:prefix_cache_hit_tokens", "Prompt tokens served from the prefix cache.", LABELS
)
REQUESTS = Counter(
    "basalt:request_success", "Finished requests by outcome.", LABELS + ["finished_reason"]
)
RUNNING = Gauge("basalt:num_requests_running", "Requests running in the engine.", LABELS)
WAITING = Gauge("basalt:num_requests_waiting", "Requests waiting in the engine.", LABELS)
KV_USAGE = Gauge("basalt:kv_cache_usage_perc", "KV-cache usage, 0..1.", LABELS)

# One replica's start, per phase (services/runtime/core/phases.py PHASES): the gauge is this
# replica's value; the histogram sums across replicas.
START_PHASE = Gauge(
    "basalt_runtime_start_phase_seconds", "Seconds this replica spent in each start phase.",
    LABELS + ["phase"],
)
START_PHASE_HIST = Histogram(
    "basalt_runtime_start_phase_duration_seconds", "Start phase durations, across replicas.",
    ["model", "phase"], buckets=(0.1, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600, 1800),
)
COLD_START = Gauge(
    "basalt_runtime_cold_start_seconds",
    "Placement (else launch) to first READY for this replica.", LABELS,
)
WEIGHTS_LOAD_RATE = Gauge(
    "basalt_runtime_weights_load_bytes_per_second",
    "Rate the weights were read into host memory before the engine started.", LABELS,
)
WEIGHTS_BYTES = Gauge(
    "basalt_runtime_weights_bytes", "Bytes of weight files read into host memory.", LABELS,
)

# One request's way through the runtime, per phase (services/runtime/core/request_phases.py
# PHASES: receive, engine_add, first_token, send). `send` is observed once per stream message.
REQUEST_PHASE = Histogram(
    "basalt_runtime_request_phase_seconds",
    "Seconds a request spent in each runtime phase (send: per stream message).",
    LABELS + ["phase"],
    buckets=(0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1,
             0.25, 0.5, 1, 2.5, 5, 10, 30),
)
STREAM_MESSAGES = Counter(
    "basalt_runtime_stream_messages", "Generate stream messages sent.", LABELS
)
STREAM_TOKENS = Counter(
    "basalt_runtime_stream_tokens",
    "Tokens sent in Generate stream messages (over stream_messages: > 1 where a lagging "
    "client had engine steps coalesced into one message).", LABELS,
)
