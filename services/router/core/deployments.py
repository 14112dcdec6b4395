"""Which deployment serves a model name: deployments, environments and LoRA names (no I/O).

A client's `model` resolves, in order, to:
1. a deployment id;
2. `<model>@<environment>` → that environment's deployment;
3. `<model>` → its `production` environment, else its only active deployment;
4. a LoRA adapter name → the deployment that lists it, with the adapter.
"""

from __future__ import annotations

from dataclasses import dataclass

from basalt.pb import deploy_pb2

PRODUCTION = "production"
ACTIVE = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
# The engine whose models answer the predict route, not chat or completions.
PYTHON_ENGINE = "python"


def is_llm(rec: deploy_pb2.DeploymentRecord) -> bool:
    """Whether the deployment chats and completes (vllm, trtllm, sim), else it predicts."""
    return rec.spec.engine != PYTHON_ENGINE


@dataclass(slots=True, frozen=True)
class Route:
    deployment: deploy_pb2.DeploymentRecord
    lora_name: str | None = None

    @property
    def deployment_id(self) -> str:
        return self.deployment.id


class DeploymentTable:
    def __init__(self) -> None:
        self._deployments: dict[str, deploy_pb2.DeploymentRecord] = {}
        self._environments: dict[tuple[str, str], str] = {}

    def put_deployment(self, rec: deploy_pb2.DeploymentRecord) -> None:
        self._deployments[rec.id] = rec

    def remove_deployment(self, deployment_id: str) -> None:
        self._deployments.pop(deployment_id, None)

    def put_environment(self, rec: deploy_pb2.EnvironmentRecord) -> None:
        self._environments[(rec.model, rec.name)] = rec.deployment_id

    def remove_environment(self, model: str, name: str) -> None:
        self._environments.pop((model, name), None)

    def deployments(self) -> list[deploy_pb2.DeploymentRecord]:
        return list(self._deployments.values())

    def get(self, deployment_id: str) -> deploy_pb2.DeploymentRecord | None:
        return self._deployments.get(deployment_id)

    def _active(self, deployment_id: str | None) -> deploy_pb2.DeploymentRecord | None:
        rec = self._deployments.get(deployment_id or "")
        return rec if rec is not None and rec.status == ACTIVE else None

    def resolve(self, name: str) -> Route | None:
        if rec := self._active(name):
            return Route(rec)
        model, sep, env = name.partition("@")
        if sep:
            rec = self._active(self._environments.get((model, env)))
            return Route(rec) if rec else None
        if rec := self._active(self._environments.get((name, PRODUCTION))):
            return Route(rec)
        of_model = [d for d in self._deployments.values() if d.model == name and d.status == ACTIVE]
        if len(of_model) == 1:
            return Route(of_model[0])
        for rec in self._deployments.values():
            if rec.status == ACTIVE and any(a.name == name for a in rec.spec.loras):
                return Route(rec, lora_name=name)
        return None

    def model_names(self, llm: bool | None = None) -> list[tuple[str, str]]:
        """(name, owned_by) of what can serve now: the active deployments' models,
        environments, ids and adapters. `llm` True: only those that chat and complete (what
        /v1/models lists); False: only python models (the predict route's); None: all.
        An active deployment scaled to zero stays: a request wakes it."""
        names: dict[str, str] = {}
        for rec in self._deployments.values():
            if rec.status != ACTIVE or (llm is not None and is_llm(rec) != llm):
                continue
            names.setdefault(rec.model, "basalt")
            names.setdefault(rec.id, rec.model)
            for adapter in rec.spec.loras:
                names.setdefault(adapter.name, rec.model)
        for (model, env), dep in self._environments.items():
            target = self._active(dep)
            if target is not None and (llm is None or is_llm(target) == llm):
                names.setdefault(f"{model}@{env}", model)
        return sorted(names.items())
