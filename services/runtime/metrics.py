"""The runtime's Prometheus metrics, named after vLLM's (`vllm:x` → `basalt:x`) (no I/O)."""

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
