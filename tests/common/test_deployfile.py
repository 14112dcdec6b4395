"""Deployment files are validated with clear errors and become records."""

import pytest
from pydantic import ValidationError

from basalt import deployfile


def test_defaults_follow_baseten_autoscaling(tmp_path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("deployments:\n  - id: tiny-v1\n    model: tiny\n    engine: sim\n"
                 "    model_path: m\n    autoscaling: {}\n")
    parsed = deployfile.load(f, base_dir=tmp_path)
    rec = parsed.deployments[0].to_record()
    a = rec.spec.autoscaling
    assert (a.min_replica, a.max_replica, a.autoscaling_window, a.scale_down_delay,
            a.concurrency_target, a.target_utilization_percentage) == (0, 1, 60, 900, 1, 70)
    assert rec.spec.model_path == str(tmp_path / "m")
    assert (a.panic_window, a.cold_start_lead, a.scale_down_step) == (6, True, 1)
    assert rec.spec.request_backpressure_policy == "queue_on_full"


def test_without_autoscaling_the_count_is_fixed(tmp_path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("deployments:\n  - id: d\n    model: m\n    replicas: 3\n")
    rec = deployfile.load(f, base_dir=tmp_path).deployments[0].to_record()
    assert not rec.spec.HasField("autoscaling") and rec.desired_replicas == 3


def test_autoscaled_deployment_starts_within_its_bounds(tmp_path) -> None:
    f = tmp_path / "d.yaml"
    f.write_text("deployments:\n  - id: d\n    model: m\n    replicas: 9\n"
                 "    autoscaling: {min_replica: 0, max_replica: 4}\n")
    assert deployfile.load(f, base_dir=tmp_path).deployments[0].to_record().desired_replicas == 4


@pytest.mark.parametrize("body", [
    "deployments:\n  - id: x\n    model: m\n    bogus: 1\n",
    "deployments:\n  - id: x\n    model: m\n    autoscaling: {target_utilization_percentage: 150}\n",
    "deployments:\n  - id: 'bad id'\n    model: m\n",
    "deployments:\n  - id: x\n    model: m\n    routing_policy: fastest\n",
    "deployments:\n  - id: x\n    model: m\n    autoscaling: {scaling_mode: fastest}\n",
    "deployments:\n  - id: x\n    model: m\n    request_backpressure_policy: drop\n",
    "deployments:\n  - id: x\n    model: m\n    autoscaling: {panic_threshold_percentage: 50}\n",
])
def test_bad_files_are_rejected_naming_the_field(tmp_path, body) -> None:
    f = tmp_path / "d.yaml"
    f.write_text(body)
    with pytest.raises(ValidationError):
        deployfile.load(f)
