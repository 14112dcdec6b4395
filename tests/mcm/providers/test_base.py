"""The runtime command line a provider builds from a launch request (no I/O)."""

from __future__ import annotations

import pytest

from basalt.config import parse
from basalt.ids import ReplicaId
from services.mcm.core.errors import InvalidLaunchRequest
from services.mcm.core.inventory import DeploymentId
from services.mcm.core.provider import LaunchRequest, runtime_args
from services.runtime.config import RuntimeSettings


def request(**kw) -> LaunchRequest:
    base = {
        "replica_id": ReplicaId("llama-1a2b"), "deployment_id": DeploymentId("llama"),
        "owner": "mcm-1", "engine": "sim", "model_path": "", "model_name": "llama",
        "nats_url": "nats://127.0.0.1:4222", "cluster": "aws/us-east-1/us-east-1a/cpu",
        "cloud": "aws", "region": "us-east-1", "zone": "us-east-1a",
    }
    return LaunchRequest(**{**base, **kw})


def test_runtime_parses_the_args_into_the_labels_the_record_carries() -> None:
    req = request(engine_args={"max_model_len": "512", "sim-time-scale": "0.5"},
                  loras={"sql": "/loras/sql", "chat": "/loras/chat"})
    s = parse(RuntimeSettings, runtime_args(req), "test")
    assert (s.engine.value, s.deployment, s.replica_id, s.owner) == ("sim", "llama",
                                                                     "llama-1a2b", "mcm-1")
    assert (s.region, s.zone, s.cluster) == ("us-east-1", "us-east-1a",
                                             "aws/us-east-1/us-east-1a/cpu")
    assert s.max_model_len == 512 and s.sim_time_scale == 0.5
    assert s.lora_map() == {"sql": "/loras/sql", "chat": "/loras/chat"}
    assert s.model == "" and s.model_name == "llama"


@pytest.mark.parametrize(("args", "field"), [
    ({"owner": "someone-else"}, "engine_args"),
    ({"replica_id": "x"}, "engine_args"),
    ({"--max-model-len": "1"}, "engine_args"),
    ({"Max_Model_Len": "1"}, "engine_args"),
])
def test_engine_args_cannot_override_provider_flags_or_smuggle_options(args, field) -> None:
    with pytest.raises(InvalidLaunchRequest) as e:
        runtime_args(request(engine_args=args))
    assert e.value.field_name == field


def test_lora_names_with_equals_are_rejected() -> None:
    with pytest.raises(InvalidLaunchRequest):
        runtime_args(request(loras={"a=b": "/x"}))
