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

# Where a request's time goes in the router, phase by phase (read the gap off a running stack):
#   parse        arrival to the handler: API-key check, body read and validation
#   tokenize     chat template / encode, in a worker thread (packing the ids included)
#   hash         the prompt's block hashes (once per request)
#   decide       prefix match + policy, per decision
#   queue        waiting for a replica with room (only requests that waited)
#   first_chunk  call opened on the replica to its first response (its prefill included)
#   relay        one streamed response: received from the replica to its bytes handed to
#                the HTTP server (formatting)
#   connect      a new replica's channel: created to connected (done when the replica
#                appears, so requests find it warm)
PHASE = Histogram(
    "basalt_router_request_phase_seconds", "Time per request in each router phase.", ["phase"],
    buckets=(2e-5, 5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.05, 0.1, 0.25,
             0.5, 1, 2.5, 5, 10, 30))
PHASE_PARSE = PHASE.labels(phase="parse")
PHASE_TOKENIZE = PHASE.labels(phase="tokenize")
PHASE_HASH = PHASE.labels(phase="hash")
PHASE_DECIDE = PHASE.labels(phase="decide")
PHASE_QUEUE = PHASE.labels(phase="queue")
PHASE_FIRST_CHUNK = PHASE.labels(phase="first_chunk")
PHASE_RELAY = PHASE.labels(phase="relay")
PHASE_CONNECT = PHASE.labels(phase="connect")
