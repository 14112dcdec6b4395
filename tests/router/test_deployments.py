"""Model names resolve to the deployment a user expects."""

from basalt.pb import deploy_pb2
from services.router.core.deployments import DeploymentTable


def _dep(dep_id: str, model: str, loras=(), active=True) -> deploy_pb2.DeploymentRecord:
    return deploy_pb2.DeploymentRecord(
        id=dep_id, model=model,
        status=deploy_pb2.DEPLOYMENT_STATUS_ACTIVE if active else deploy_pb2.DEPLOYMENT_STATUS_INACTIVE,
        spec=deploy_pb2.DeploymentSpec(loras=[deploy_pb2.LoraAdapter(name=n, path="/x") for n in loras]),
    )


def test_environment_decides_which_deployment_a_model_name_serves() -> None:
    t = DeploymentTable()
    t.put_deployment(_dep("v1", "chat"))
    t.put_deployment(_dep("v2", "chat"))
    assert t.resolve("chat") is None, "two deployments and no production environment: ambiguous"
    t.put_environment(deploy_pb2.EnvironmentRecord(model="chat", name="production", deployment_id="v1"))
    t.put_environment(deploy_pb2.EnvironmentRecord(model="chat", name="staging", deployment_id="v2"))
    assert t.resolve("chat").deployment_id == "v1"
    assert t.resolve("chat@staging").deployment_id == "v2"
    t.put_environment(deploy_pb2.EnvironmentRecord(model="chat", name="production", deployment_id="v2"))
    assert t.resolve("chat").deployment_id == "v2"
    assert t.resolve("v1").deployment_id == "v1"


def test_lora_name_routes_to_its_deployment_with_the_adapter() -> None:
    t = DeploymentTable()
    t.put_deployment(_dep("v1", "base", loras=["sql-lora"]))
    route = t.resolve("sql-lora")
    assert (route.deployment_id, route.lora_name) == ("v1", "sql-lora")
    assert t.resolve("base").lora_name is None


def test_inactive_and_unknown_names_do_not_resolve() -> None:
    t = DeploymentTable()
    t.put_deployment(_dep("v1", "m", active=False))
    assert t.resolve("m") is None
    assert t.resolve("v1") is None
    assert t.resolve("nothing") is None
    assert ("m", "basalt") not in t.model_names()
