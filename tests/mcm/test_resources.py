"""The deployments API core: transitions refuse what they must and never change their input."""

from __future__ import annotations

import pytest

from basalt.pb import deploy_pb2, events_pb2
from services.mcm.api import http_status
from services.mcm.core import resources as res
from services.mcm.core.api_errors import (
    DeploymentExists,
    DeploymentInactive,
    DevelopmentExists,
    EnvironmentsPointAt,
    InvalidRequest,
    NotFound,
)

BASETEN_DEFAULTS = {
    "min_replica": 0,
    "max_replica": 1,
    "autoscaling_window": 60,
    "scale_down_delay": 900,
    "concurrency_target": 1,
    "target_utilization_percentage": 70,
}


def baseten(settings: dict | None) -> dict:
    """The Baseten-named part of a deployment's autoscaling settings."""
    assert settings is not None
    return {k: settings[k] for k in BASETEN_DEFAULTS}


def body(**kw):  # type: ignore[no-untyped-def]
    return res.DeploymentBody.model_validate({"id": "d1", "engine": "sim", **kw})


def record(dep_id: str = "d1", model: str = "m", **kw) -> deploy_pb2.DeploymentRecord:
    return res.new_deployment(model, body(id=dep_id, **kw), 1.0, [])


def env(name: str, dep_id: str, model: str = "m") -> deploy_pb2.EnvironmentRecord:
    return deploy_pb2.EnvironmentRecord(model=model, name=name, deployment_id=dep_id)


def test_new_deployment_has_basetens_defaults() -> None:
    rec = record(autoscaling={})
    assert baseten(res.autoscaling_dict(rec)) == BASETEN_DEFAULTS
    assert res.autoscaling_dict(record()) is None  # no settings: a fixed count
    assert (rec.kind, rec.status, rec.desired_replicas) == ("published", res.ACTIVE, 1)
    assert rec.model == "m" and rec.created_ts == 1.0


def test_new_inactive_deployment_wants_no_replicas() -> None:
    rec = record(active=False, replicas=3)
    assert (rec.status, rec.desired_replicas) == (res.INACTIVE, 0)


def test_new_deployment_refuses_taken_id_and_second_development() -> None:
    existing = [record("d1", kind="development")]
    with pytest.raises(DeploymentExists):
        res.new_deployment("other-model", body(id="d1"), 2.0, existing)
    with pytest.raises(DevelopmentExists) as e:
        res.new_deployment("m", body(id="d2", kind="development"), 2.0, existing)
    assert e.value.existing_id == "d1" and http_status(e.value) == 409
    # Another model may have its own development deployment.
    assert (
        res.new_deployment("n", body(id="d2", kind="development"), 2.0, existing).kind
        == "development"
    )


def test_new_deployment_refuses_min_above_max() -> None:
    with pytest.raises(InvalidRequest) as e:
        record(autoscaling={"min_replica": 3, "max_replica": 2})
    assert e.value.param == "autoscaling.min_replica" and http_status(e.value) == 422
    assert "3" in e.value.message and "2" in e.value.message


@pytest.mark.parametrize(
    "name",
    ["a b", "m@prod", "a//b", "/a", "a.", "x/deployments/y", "environments", "a" * 129, "a:b"],
)
def test_bad_model_names_are_refused(name: str) -> None:
    with pytest.raises(InvalidRequest) as e:
        res.new_deployment(name, body(), 1.0, [])
    assert e.value.param == "model"


@pytest.mark.parametrize("name", ["m", "meta-llama/Llama-3.1-8B", "org/team/model", "a=b_c"])
def test_good_model_names_pass(name: str) -> None:
    assert res.new_deployment(name, body(), 1.0, []).model == name


def test_production_environment_only_for_first_published() -> None:
    pub = record("d1")
    assert res.production_environment(pub, []) == env("production", "d1")
    assert res.production_environment(pub, [env("production", "d0")]) is None
    assert res.production_environment(pub, [env("production", "x", model="other")]) is not None
    assert res.production_environment(record("d2", kind="development"), []) is None


def test_of_model_hides_other_models_deployments() -> None:
    with pytest.raises(NotFound) as e:
        res.of_model(record("d1", model="a"), "b", "d1")
    assert e.value.code == "deployment_not_found" and http_status(e.value) == 404
    with pytest.raises(NotFound):
        res.of_model(None, "a", "d1")


def test_activate_deactivate_round_trip() -> None:
    rec = record(autoscaling={"min_replica": 2, "max_replica": 4}, replicas=3)
    off = res.deactivate(rec)
    assert (off.status, off.desired_replicas) == (res.INACTIVE, 0)
    on = res.activate(off)
    assert (on.status, on.desired_replicas) == (res.ACTIVE, 2)  # back to max(1, min_replica)
    assert rec.desired_replicas == 3 and rec.status == res.ACTIVE  # input untouched
    assert res.activate(rec) == rec  # already serving: nothing to change


def test_scale_sets_desired_and_refuses_inactive() -> None:
    rec = record()
    assert res.scale(rec, 7).desired_replicas == 7
    with pytest.raises(DeploymentInactive) as e:
        res.scale(res.deactivate(rec), 2)
    assert e.value.deployment_id == "d1" and http_status(e.value) == 409


def test_patch_autoscaling_merges_and_validates() -> None:
    rec = record()
    out = res.patch_autoscaling(rec, res.AutoscalingPatch(max_replica=5, scale_down_delay=30))
    assert baseten(res.autoscaling_dict(out)) == {
        **BASETEN_DEFAULTS,
        "max_replica": 5,
        "scale_down_delay": 30,
    }
    assert res.autoscaling_dict(rec) is None  # unchanged input: still not autoscaled
    with pytest.raises(InvalidRequest) as e:
        res.patch_autoscaling(rec, res.AutoscalingPatch(target_utilization_percentage=101))
    assert e.value.param == "target_utilization_percentage"
    with pytest.raises(InvalidRequest) as e:
        res.patch_autoscaling(rec, res.AutoscalingPatch(min_replica=2))  # max is 1
    assert e.value.param == "min_replica"


def test_patch_autoscaling_brings_desired_within_new_bounds() -> None:
    rec = res.scale(record(autoscaling={"max_replica": 10}), 6)
    assert res.patch_autoscaling(rec, res.AutoscalingPatch(max_replica=4)).desired_replicas == 4
    assert res.patch_autoscaling(rec, res.AutoscalingPatch(min_replica=8)).desired_replicas == 8
    # Other settings leave a hand-set count alone.
    assert (
        res.patch_autoscaling(rec, res.AutoscalingPatch(autoscaling_window=30)).desired_replicas
        == 6
    )
    # An inactive deployment stays at 0.
    off = res.deactivate(rec)
    assert res.patch_autoscaling(off, res.AutoscalingPatch(min_replica=3)).desired_replicas == 0


def test_promote_target_publishes_and_scales_up() -> None:
    dev = res.scale(record(kind="development", autoscaling={"min_replica": 2, "max_replica": 3}), 0)
    out = res.promote_target(dev)
    assert (out.kind, out.desired_replicas) == ("published", 2)
    with pytest.raises(DeploymentInactive):
        res.promote_target(res.deactivate(dev))


def test_retire_goes_down_to_min_replica() -> None:
    assert res.retire(res.scale(record(), 3)).desired_replicas == 0
    kept = record(autoscaling={"min_replica": 1, "max_replica": 2}, replicas=2)
    assert res.retire(kept).desired_replicas == 1
    assert res.retire(kept).status == res.ACTIVE


def test_to_retire_spares_deployments_other_environments_serve() -> None:
    prod = env("production", "old")
    assert res.to_retire(prod, "new", [prod]) == "old"
    assert res.to_retire(prod, "new", [prod, env("staging", "old")]) is None
    assert res.to_retire(prod, "old", [prod]) is None
    assert res.to_retire(env("production", ""), "new", []) is None


def test_check_deletable_names_the_environments() -> None:
    rec = record()
    res.check_deletable(rec, [env("production", "d2")])
    with pytest.raises(EnvironmentsPointAt) as e:
        res.check_deletable(rec, [env("staging", "d1"), env("production", "d1")])
    assert e.value.environments == ["production", "staging"]


def test_development_race_goes_to_the_earlier_write() -> None:
    assert res.loses_development_race(12, [10])
    assert not res.loses_development_race(10, [12])
    assert not res.loses_development_race(10, [])


def test_deployment_view_counts_ready_replicas() -> None:
    reps = [
        events_pb2.ReplicaRecord(
            replica_id=f"r{i}",
            deployment="d1",
            state=s,
            region="us",
            zone="us-a",
            cluster="c1",
            grpc_address=f"h:{i}",
            started_ts=1.0, weights_revision="k1",
            start=events_pb2.StartPhases(placed_ts=1.0, fetched_ts=2.5, tier="node"),
        )
        for i, s in enumerate([events_pb2.REPLICA_STATE_READY, events_pb2.REPLICA_STATE_LOADING])
    ]
    reps.append(events_pb2.ReplicaRecord(replica_id="x", deployment="d9"))
    view = res.deployment_view(record(), [env("production", "d1")], reps, detail=True)
    assert (view["active_replica_count"], view["replica_count"]) == (1, 2)
    assert view["is_production"] and view["environments"] == ["production"]
    assert view["replicas"][1] == {
        "id": "r1",
        "state": "loading",
        "spec_revision": "",
        "region": "us",
        "zone": "us-a",
        "cluster": "c1",
        "grpc_address": "h:1",
        "metrics_address": "",
        "engine": "",
        "owner": "",
        "heartbeat_ts": 0.0,
        "started_ts": 1.0,
        "ready_ts": 0.0,
        "weights_revision": "k1",
        "start": {"placed_ts": 1.0, "fetched_ts": 2.5, "tier": "node"},
    }
    assert view["autoscaling_settings"] is None and view["autoscaler"] is None
    assert view["spec"]["engine"] == "sim" and "autoscaling" not in view["spec"]


def test_describe_errors_names_fields() -> None:
    err = res.describe_errors(
        [
            {"loc": ("body", "autoscaling", "min_replica"), "msg": "too small"},
            {"loc": ("body", "bogus"), "type": "extra_forbidden", "msg": "x"},
        ]
    )
    assert err.param == "autoscaling.min_replica"
    assert err.message == "autoscaling.min_replica: too small; bogus: unknown field"


def test_a_remote_weights_source_without_a_tokenizer_folder_is_refused_with_the_fix() -> None:
    """The router tokenizes prompts: with weights only on the Hub it would have no tokenizer."""
    with pytest.raises(InvalidRequest, match="tokenizer") as e:
        res.new_deployment("m", body(id="d1", engine="vllm",
                                     weights={"uri": "hf://org/model", "revision": "abc"}),
                           1.0, [])
    assert e.value.param == "model_path"
    rec = res.new_deployment("m", body(id="d1", engine="vllm", model_path="/models/tok",
                                       weights={"uri": "hf://org/model"}), 1.0, [])
    assert rec.spec.weights.uri == "hf://org/model" and rec.spec.model_path == "/models/tok"
    local = res.new_deployment("m", body(id="d2", engine="vllm", weights={"uri": "/models/m"}),
                               1.0, [])
    assert local.spec.weights.uri == "/models/m"


def test_the_models_listing_shows_the_autoscalers_decision() -> None:
    """`basalt status` reads the models listing: its deployments carry the autoscaler's last
    decision (the SCALING column), as a single deployment's view does."""
    rec = record()
    decision = deploy_pb2.AutoscalerDecision(deployment_id="d1", desired=2, reason="panic")
    view = res.model_view("m", [rec], [], [], {"d1": decision})
    assert view["deployments"][0]["autoscaler"]["reason"] == "panic"
    assert res.model_view("m", [rec], [], [])["deployments"][0]["autoscaler"] is None
