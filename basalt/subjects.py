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

# -- Control plane state (JetStream KV) ---------------------------------------------------

# DeploymentRecord per deployment, key = deployment id.
DEPLOYMENTS_BUCKET = "basalt_deployments"
# EnvironmentRecord per (model, environment), key = "<model>.<environment>".
ENVIRONMENTS_BUCKET = "basalt_environments"
# ApiKeyRecord per key, key = key id; only a hash of each key is stored.
API_KEYS_BUCKET = "basalt_api_keys"

# -- Commands that must not be lost (JetStream stream) -----------------------------------

# ScaleCommand, at-least-once; the control plane applies them idempotently by command_id.
SCALE_STREAM = "BASALT_SCALE"
# The last ScaleCommand applied per deployment (key = deployment id), so a redelivered or
# older command is skipped.
SCALE_APPLIED_BUCKET = "basalt_scale_applied"
SCALE = "basalt.scale.{deployment_id}"
SCALE_ALL = "basalt.scale.>"

# -- Request records (core NATS) ---------------------------------------------------------

# RequestRecord per finished request, from the router (the autoscaler consumes them).
REQUESTS = "basalt.requests.{deployment_id}"
REQUESTS_ALL = "basalt.requests.>"


def scale(deployment_id: str) -> str:
    return SCALE.format(deployment_id=deployment_id)


def requests(deployment_id: str) -> str:
    return REQUESTS.format(deployment_id=deployment_id)

# -- Autoscaling ---------------------------------------------------------------------------

# DemandReport per deployment from each router, every DEMAND_INTERVAL_S (core NATS).
DEMAND = "basalt.demand.{deployment_id}"
DEMAND_ALL = "basalt.demand.>"
DEMAND_INTERVAL_S = 1.0
# WakeRequest: a request waits at a deployment with no ready replica (core NATS).
WAKE = "basalt.wake.{deployment_id}"
WAKE_ALL = "basalt.wake.>"
# AutoscalerDecision per deployment, key = deployment id (written by the lease holder).
AUTOSCALER_BUCKET = "basalt_autoscaler"
# AutoscalerLease under key "leader": which autoscaler process acts.
AUTOSCALER_LEASE_BUCKET = "basalt_autoscaler_lease"
AUTOSCALER_LEASE_KEY = "leader"


def demand(deployment_id: str) -> str:
    return DEMAND.format(deployment_id=deployment_id)


def wake(deployment_id: str) -> str:
    return WAKE.format(deployment_id=deployment_id)

# -- Node weight cache (services/coldstart) -----------------------------------------------

# WeightsFetch commands, at-least-once: make a revision present on node <node>. The node's
# coldstart service consumes its own subject with durable consumer "coldstart-<node>".
WEIGHTS_STREAM = "BASALT_WEIGHTS"
WEIGHTS_FETCH = "basalt.weights.fetch.{node}"
WEIGHTS_FETCH_ALL = "basalt.weights.fetch.>"
# NodeWeights per node, key = node: what its cache holds, its measured bandwidth, heartbeat.
WEIGHTS_BUCKET = "basalt_weights"
# WeightsProgress of a node's fetches, a few times a second (core NATS).
WEIGHTS_PROGRESS = "basalt.weights.progress.{node}"
WEIGHTS_PROGRESS_ALL = "basalt.weights.progress.>"
# A node record older than this means no coldstart service runs there.
WEIGHTS_STALE_S = 20.0


def weights_fetch(node: str) -> str:
    return WEIGHTS_FETCH.format(node=node)


def weights_progress(node: str) -> str:
    return WEIGHTS_PROGRESS.format(node=node)
