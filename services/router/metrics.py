"""The router's Prometheus metrics (no I/O)."""

from prometheus_client import Counter, Gauge, Histogram

REQUESTS = Counter("basalt_router_requests", "Requests by deployment and outcome.", ["deployment", "outcome"])
TTFT = Histogram("basalt_router_time_to_first_token_seconds", "TTFT seen by the router, queue included.",
                 ["deployment"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
QUEUED = Gauge("basalt_router_queued_requests", "Requests waiting for a replica.", ["deployment"])
RETRIES = Counter("basalt_router_retries", "Requests retried on another replica.", ["deployment"])
ROUTED = Counter("basalt_router_routed", "Routing decisions by replica.", ["deployment", "replica"])
KV_DUMPS = Counter("basalt_router_kv_dumps", "KV-state dumps fetched after a gap or restart.")
REFUSED_MESSAGES = Counter(
    "basalt_router_unauthentic_messages", "Replica records, load reports and KV-event batches "
    "dropped for not coming from the replica they name.", ["kind"])
