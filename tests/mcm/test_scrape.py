"""Prometheus service discovery of the replicas (services/mcm/core/scrape.py; pure)."""

from __future__ import annotations

from basalt.pb import events_pb2
from services.mcm.core.scrape import scrape_targets


def _rec(rid: str, state: int, address: str = "10.0.0.1:9000") -> events_pb2.ReplicaRecord:
    return events_pb2.ReplicaRecord(replica_id=rid, deployment="d1", model="m", engine="sim",
                                    region="eu", zone="eu-a", cluster="c1", owner="o",
                                    state=state, metrics_address=address)


def test_one_group_per_live_replica_with_a_metrics_address_sorted_by_id() -> None:
    S = events_pb2
    groups = scrape_targets([
        _rec("r2", S.REPLICA_STATE_READY, "10.0.0.2:9000"), _rec("r1", S.REPLICA_STATE_LOADING),
        _rec("r3", S.REPLICA_STATE_DRAINING, "10.0.0.3:9000"),
        _rec("r4", S.REPLICA_STATE_READY, ""), _rec("r5", S.REPLICA_STATE_UNSPECIFIED),
    ])
    assert [g["targets"] for g in groups] == [["10.0.0.1:9000"], ["10.0.0.2:9000"],
                                              ["10.0.0.3:9000"]]
    assert groups[0]["labels"] == {"deployment": "d1", "engine": "sim", "region": "eu",
                                   "zone": "eu-a", "cluster": "c1", "basalt_owner": "o"}
    # `replica` and `model` are the runtime metrics' own labels: never target labels.
    assert not {"replica", "model", "job"} & set(groups[0]["labels"])
