"""Every NATS subject, stream and KV bucket basalt uses, and what travels on each (no I/O).

Payloads are protobuf messages from `basalt/pb/` (see docs/architecture.md).
"""

# -- Core NATS (events: fire and forget, many consumers) --------------------------------

# KvEventBatch from one replica. Every router instance subscribes to `basalt.kv.>`.
KV_EVENTS = "basalt.kv.{replica_id}"
KV_EVENTS_ALL = "basalt.kv.>"

# LoadReport from one replica, every `load_report_interval` seconds.
LOAD = "basalt.load.{replica_id}"
LOAD_ALL = "basalt.load.>"

# -- JetStream KV buckets (shared state) -------------------------------------------------

# ReplicaRecord per replica, key = replica id. Records expire after REPLICAS_TTL_S unless
# the replica's heartbeat rewrites them; a consumer treats an expired record as a gone replica.
REPLICAS_BUCKET = "basalt_replicas"
REPLICAS_TTL_S = 15.0


def kv_events(replica_id: str) -> str:
    return KV_EVENTS.format(replica_id=replica_id)


def load(replica_id: str) -> str:
    return LOAD.format(replica_id=replica_id)
