"""Prometheus HTTP service discovery for the replicas: where each live replica serves its
/metrics, with the labels that say what it runs and where (pure, no I/O).

A replica's metrics port is chosen at its start (any free port), so no static scrape config
can name it; the control plane already reads every replica record, which carries the
address. Prometheus asks `GET /v1/metrics/targets` (http_sd_configs) and gets one target
group per replica. `replica` and `model` are labels of the runtime's own metrics, so they are
not target labels here (Prometheus would rename the scraped ones).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from basalt.pb import events_pb2

# States whose process is up and serving /metrics.
SCRAPED = frozenset({
    events_pb2.REPLICA_STATE_LOADING, events_pb2.REPLICA_STATE_READY,
    events_pb2.REPLICA_STATE_DRAINING,
})


def scrape_targets(records: Iterable[events_pb2.ReplicaRecord]) -> list[dict[str, Any]]:
    """Prometheus HTTP SD target groups, one per live replica with a metrics address, sorted
    by replica id (a stable answer: Prometheus diffs it)."""
    out = []
    for rec in sorted(records, key=lambda r: r.replica_id):
        if not rec.metrics_address or rec.state not in SCRAPED:
            continue
        out.append({"targets": [rec.metrics_address], "labels": {
            "deployment": rec.deployment, "engine": rec.engine,
            "region": rec.region, "zone": rec.zone, "cluster": rec.cluster,
            "basalt_owner": rec.owner,
        }})
    return out
