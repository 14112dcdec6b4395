"""The control plane's status as the deployments API shows it (pure, no I/O).

Clusters with their usage and blocks, active blocks, unplaced deployments and start failures;
the reconciler passes in its state and the time.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from services.mcm.core.blocklist import Blocklist
from services.mcm.core.errors import PlacementError
from services.mcm.core.inventory import Cluster, DeploymentId, units_for
from services.mcm.core.provider import LaunchHandle


@dataclass(slots=True, frozen=True)
class StartFailure:
    """Replicas of a deployment that exited before they were ready, and when to try again."""

    count: int
    retry_at: float
    last_error: str
    # The start phase and the one line that say what went wrong (basalt/startfail.py).
    phase: str = ""
    first_error: str = ""
    # After `max_failures` in a row the deployment is FAILED: no more launches until its
    # spec changes or an operator asks again (activate), which `revision` / `retry_ts` tell.
    given_up: bool = False
    revision: str = ""
    retry_ts: float = 0.0


def cluster_rows(provider: str, clusters: Iterable[Cluster], listed: Iterable[LaunchHandle],
                 blocklist: Blocklist, now: float) -> list[dict[str, Any]]:
    """Each cluster as the deployments API shows it (GET /v1/clusters); `listed` are the
    replicas the provider runs, counted against each cluster's capacity."""
    used: dict[str, int] = {}
    for h in listed:
        used[h.cluster] = used.get(h.cluster, 0) + units_for(h.accelerator_count)
    out = []
    for c in clusters:
        block = blocklist.blocking(c, now)
        out.append({
            "name": c.name, "provider": provider, "cloud": c.cloud,
            "region": c.region, "zone": c.zone, "accelerator": c.accelerator or "CPU",
            "capacity": c.gpus_total, "used": used.get(c.name, 0), "up": c.up,
            "price_per_hour": c.price_per_gpu_hour,
            "blocked": None if block is None else {
                "scope": block.scope.value, "key": block.key, "until": block.until,
                "reason": block.reason},
        })
    return out


def status_doc(owner: str, provider: str, clusters: list[dict[str, Any]], blocklist: Blocklist,
               unplaced: Mapping[DeploymentId, PlacementError],
               failures: Mapping[DeploymentId, StartFailure], now: float) -> dict[str, Any]:
    """Clusters, active blocks, unplaced deployments and start failures, as JSON."""
    return {
        "owner": owner, "provider": provider,
        "clusters": clusters,
        "blocks": [{"scope": b.scope.value, "key": b.key, "until": b.until,
                    "reason": b.reason} for b in blocklist.active(now)],
        "unplaced": {d: str(e) for d, e in sorted(unplaced.items())},
        "start_failures": {d: {"count": f.count, "retry_at": f.retry_at,
                               "last_error": f.last_error, "phase": f.phase,
                               "first_error": f.first_error, "failed": f.given_up}
                           for d, f in sorted(failures.items())},
    }
