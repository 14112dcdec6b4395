"""The two clients, `Client` (blocking) and `AsyncClient`: the same calls (`calls`), sent over
httpx (does I/O: HTTP)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Self, TypeVar

import httpx

from .calls import Call, calls, read_response
from .errors import Unreachable
from .views import Applied, Cluster, Deployment, Environment, Model, Promoted

T = TypeVar("T")
DEFAULT_URL = "http://127.0.0.1:8081"
DEFAULT_INFERENCE_URL = "http://127.0.0.1:8000"


def _headers(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def _request(call: Call[Any]) -> dict[str, Any]:
    return {"method": call.method, "url": call.path,
            **({} if call.body is None else {"json": call.body})}


class _Base:
    """What both clients hold: the two URLs and keys."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, *,
                 inference_url: str = DEFAULT_INFERENCE_URL, inference_key: str | None = None,
                 timeout: float = 30.0) -> None:
        self.url, self.inference_url = url.rstrip("/"), inference_url.rstrip("/")
        self.key, self.inference_key, self.timeout = key, inference_key, timeout

    def _base_of(self, call: Call[Any]) -> str:
        return self.inference_url if call.inference else self.url


class Client(_Base):
    """The deployments API (management key) and the router (inference key), blocking."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, **kw: Any) -> None:
        super().__init__(url, key, **kw)
        self._mgmt = httpx.Client(base_url=self.url, headers=_headers(self.key), timeout=self.timeout)
        self._infer = httpx.Client(base_url=self.inference_url, timeout=self.timeout,
                                   headers=_headers(self.inference_key))

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def close(self) -> None:
        self._mgmt.close()
        self._infer.close()

    def send(self, call: Call[T]) -> T:
        try:
            r = (self._infer if call.inference else self._mgmt).request(**_request(call))
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise Unreachable(self._base_of(call), str(e)) from None
        return read_response(call, r)

    def models(self) -> list[Model]:
        return self.send(calls.models())

    def model(self, name: str) -> Model:
        return self.send(calls.model(name))

    def delete_model(self, name: str) -> dict[str, Any]:
        return self.send(calls.delete_model(name))

    def deployments(self, model: str) -> list[Deployment]:
        return self.send(calls.deployments(model))

    def find_deployment(self, deployment_id: str) -> Deployment:
        return self.send(calls.find_deployment(deployment_id))

    def deployment(self, model: str, deployment_id: str) -> Deployment:
        return self.send(calls.deployment(model, deployment_id))

    def create_deployment(self, model: str, spec: Mapping[str, Any] | Any) -> Deployment:
        return self.send(calls.create_deployment(model, spec))

    def apply_deployment(self, model: str, spec: Mapping[str, Any] | Any) -> Applied:
        return self.send(calls.apply_deployment(model, spec))

    def delete_deployment(self, model: str, deployment_id: str) -> dict[str, Any]:
        return self.send(calls.delete_deployment(model, deployment_id))

    def activate(self, model: str, deployment_id: str) -> Deployment:
        return self.send(calls.action(model, deployment_id, "activate"))

    def deactivate(self, model: str, deployment_id: str) -> Deployment:
        return self.send(calls.action(model, deployment_id, "deactivate"))

    def wake(self, model: str, deployment_id: str) -> Deployment:
        return self.send(calls.action(model, deployment_id, "wake"))

    def scale(self, model: str, deployment_id: str, replicas: int) -> Deployment:
        return self.send(calls.action(model, deployment_id, "scale", {"replicas": replicas}))

    def promote(self, model: str, deployment_id: str, environment: str = "production") -> Promoted:
        return self.send(calls.promote(model, deployment_id, environment))

    def patch_autoscaling(self, model: str, deployment_id: str,
                          patch: Mapping[str, Any]) -> Deployment:
        return self.send(calls.autoscaling(model, deployment_id, patch))

    def environments(self, model: str) -> list[Environment]:
        return self.send(calls.environments(model))

    def create_environment(self, model: str, name: str, deployment_id: str) -> Environment:
        return self.send(calls.create_environment(model, name, deployment_id))

    def clusters(self) -> list[Cluster]:
        return self.send(calls.clusters())

    def chat(self, model: str, messages: Sequence[Mapping[str, Any]], **kw: Any) -> dict[str, Any]:
        return self.send(calls.chat(model, messages, **kw))

    def predict(self, model: str, payload: Any) -> Any:
        return self.send(calls.predict(model, payload))


class AsyncClient(_Base):
    """`Client`'s methods, awaited."""

    def __init__(self, url: str = DEFAULT_URL, key: str | None = None, **kw: Any) -> None:
        super().__init__(url, key, **kw)
        self._mgmt = httpx.AsyncClient(base_url=self.url, headers=_headers(self.key),
                                       timeout=self.timeout)
        self._infer = httpx.AsyncClient(base_url=self.inference_url, timeout=self.timeout,
                                        headers=_headers(self.inference_key))

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._mgmt.aclose()
        await self._infer.aclose()

    async def send(self, call: Call[T]) -> T:
        try:
            r = await (self._infer if call.inference else self._mgmt).request(**_request(call))
        except (httpx.ConnectError, httpx.ConnectTimeout) as e:
            raise Unreachable(self._base_of(call), str(e)) from None
        return read_response(call, r)

    async def models(self) -> list[Model]:
        return await self.send(calls.models())

    async def model(self, name: str) -> Model:
        return await self.send(calls.model(name))

    async def delete_model(self, name: str) -> dict[str, Any]:
        return await self.send(calls.delete_model(name))

    async def deployments(self, model: str) -> list[Deployment]:
        return await self.send(calls.deployments(model))

    async def find_deployment(self, deployment_id: str) -> Deployment:
        return await self.send(calls.find_deployment(deployment_id))

    async def deployment(self, model: str, deployment_id: str) -> Deployment:
        return await self.send(calls.deployment(model, deployment_id))

    async def create_deployment(self, model: str, spec: Mapping[str, Any] | Any) -> Deployment:
        return await self.send(calls.create_deployment(model, spec))

    async def apply_deployment(self, model: str, spec: Mapping[str, Any] | Any) -> Applied:
        return await self.send(calls.apply_deployment(model, spec))

    async def delete_deployment(self, model: str, deployment_id: str) -> dict[str, Any]:
        return await self.send(calls.delete_deployment(model, deployment_id))

    async def activate(self, model: str, deployment_id: str) -> Deployment:
        return await self.send(calls.action(model, deployment_id, "activate"))

    async def deactivate(self, model: str, deployment_id: str) -> Deployment:
        return await self.send(calls.action(model, deployment_id, "deactivate"))

    async def wake(self, model: str, deployment_id: str) -> Deployment:
        return await self.send(calls.action(model, deployment_id, "wake"))

    async def scale(self, model: str, deployment_id: str, replicas: int) -> Deployment:
        return await self.send(calls.action(model, deployment_id, "scale", {"replicas": replicas}))

    async def promote(self, model: str, deployment_id: str,
                      environment: str = "production") -> Promoted:
        return await self.send(calls.promote(model, deployment_id, environment))

    async def patch_autoscaling(self, model: str, deployment_id: str,
                                patch: Mapping[str, Any]) -> Deployment:
        return await self.send(calls.autoscaling(model, deployment_id, patch))

    async def environments(self, model: str) -> list[Environment]:
        return await self.send(calls.environments(model))

    async def create_environment(self, model: str, name: str, deployment_id: str) -> Environment:
        return await self.send(calls.create_environment(model, name, deployment_id))

    async def clusters(self) -> list[Cluster]:
        return await self.send(calls.clusters())

    async def chat(self, model: str, messages: Sequence[Mapping[str, Any]],
                   **kw: Any) -> dict[str, Any]:
        return await self.send(calls.chat(model, messages, **kw))

    async def predict(self, model: str, payload: Any) -> Any:
        return await self.send(calls.predict(model, payload))
