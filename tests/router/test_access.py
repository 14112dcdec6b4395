"""The access line's fields and the outcome of each error (the pure core, no I/O)."""

from __future__ import annotations

import pytest

from basalt.pb import deploy_pb2
from services.router.core import errors
from services.router.core.access import AccessEntry, access_fields, outcome_of
from services.router.core.deployments import DeploymentTable


@pytest.mark.parametrize(("error", "outcome"), [
    (errors.BadRequest("x"), "client_error"),
    (errors.ModelNotFound("m"), "client_error"),
    (errors.Unauthorized("x"), "unauthorized"),
    (errors.Forbidden("m"), "unauthorized"),
    (errors.RateLimited("x", 1.0), "rate_limited"),
    (errors.QueueFull("d", 4), "rejected"),
    (errors.Rejected("d", True), "rejected"),
    (errors.ParkedFull("d", 4), "rejected"),
    (errors.NoReplica("d", 1.0, "none ready"), "timeout"),
    (errors.AuthUnavailable("down"), "unavailable"),
    (errors.ReplicaFailed("x"), "replica_error"),
    (errors.RouterError("x"), "error"),
])
def test_each_error_has_its_outcome(error: errors.RouterError, outcome: str) -> None:
    assert outcome_of(error) == outcome


def test_a_served_request_takes_its_line_from_its_record() -> None:
    entry = AccessEntry("r1", "POST", "/v1/completions", 0.0, key_id="k1", model="chat")
    entry.record = deploy_pb2.RequestRecord(
        request_id="r1", deployment_id="chat-v1", replica_id="a", queue_wait_ms=1.234,
        ttft_ms=5.678, prompt_tokens=10, cached_tokens=4, completion_tokens=3,
        outcome="cancelled", lora_name="ad1")
    line = access_fields(entry, 12.345)
    assert line == {
        "request_id": "r1", "method": "POST", "route": "/v1/completions", "status": 200,
        "outcome": "cancelled", "error": None, "model": "chat", "deployment": "chat-v1",
        "replica": "a", "lora": "ad1", "key_id": "k1", "stream": False,
        "tokens": {"prompt": 10, "cached": 4, "output": 3}, "queue_ms": 1.23,
        "ttft_ms": 5.68, "total_ms": 12.35}


def test_a_refusal_has_the_same_keys_with_what_is_known() -> None:
    entry = AccessEntry("r2", "GET", "/v1/nothing", 0.0)
    served = access_fields(AccessEntry("r3", "GET", "/v1/models", 0.0), 1.0)
    entry.refused(429, errors.RateLimited("slow down", 1.0))
    line = access_fields(entry, 0.5)
    assert set(line) == set(served)
    assert (line["status"], line["outcome"], line["error"]) == (429, "rate_limited",
                                                                "rate_limited")
    assert line["tokens"] is None and line["ttft_ms"] is None
    entry.refused(405, code="method_not_allowed")
    assert access_fields(entry, 0.5)["outcome"] == "client_error"
    assert served["outcome"] == "ok"


def _dep(dep_id: str, model: str, engine: str, active: bool = True
         ) -> deploy_pb2.DeploymentRecord:
    return deploy_pb2.DeploymentRecord(
        id=dep_id, model=model, spec=deploy_pb2.DeploymentSpec(engine=engine),
        status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE if active
        else deploy_pb2.DEPLOYMENT_STATUS_INACTIVE)


def test_model_names_by_what_the_route_serves() -> None:
    t = DeploymentTable()
    for rec in (_dep("llm-v1", "llm", "vllm"), _dep("sim-v1", "sim", "sim"),
                _dep("py-v1", "py", "python"), _dep("old-v1", "old", "sim", active=False)):
        t.put_deployment(rec)
    t.put_environment(deploy_pb2.EnvironmentRecord(model="llm", name="prod", deployment_id="llm-v1"))
    t.put_environment(deploy_pb2.EnvironmentRecord(model="py", name="prod", deployment_id="py-v1"))
    t.put_environment(deploy_pb2.EnvironmentRecord(model="old", name="prod",
                                                   deployment_id="old-v1"))
    llm = {name for name, _ in t.model_names(llm=True)}
    assert llm == {"llm", "llm-v1", "llm@prod", "sim", "sim-v1"}
    assert {name for name, _ in t.model_names(llm=False)} == {"py", "py-v1", "py@prod"}
    assert {name for name, _ in t.model_names()} == llm | {"py", "py-v1", "py@prod"}
