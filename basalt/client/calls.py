"""Every call of the deployments API and the router's OpenAI door, described once (method, path,
body, how to read the answer) for both clients; and reading an answer (no I/O: `Call` is
data, `read_response` reads a response already received)."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar
from urllib.parse import quote

import httpx

from .errors import BasaltError
from .views import Applied, Cluster, Deployment, Environment, Model, Promoted, build

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request, described; `read` turns the decoded JSON answer into the result."""

    method: str
    path: str
    read: Callable[[Any], T]
    body: Any = None
    inference: bool = False  # to the router's OpenAI door, not the deployments API


def _m(model: str) -> str:
    return f"/v1/models/{quote(model, safe='/')}"


def _d(model: str, deployment_id: str) -> str:
    return f"{_m(model)}/deployments/{quote(deployment_id, safe='')}"


def _spec(spec: Mapping[str, Any] | Any) -> dict[str, Any]:
    """A deployment body from a dict or a `basalt.deployfile.Deployment` (minus `model`: the
    path names it)."""
    body = spec.model_dump() if hasattr(spec, "model_dump") else dict(spec)
    body.pop("model", None)
    return dict(body)


def _find(deployment_id: str) -> Callable[[Any], Deployment]:
    def read(data: Any) -> Deployment:
        for m in data.get("models", []):
            for d in m.get("deployments", []):
                if d.get("id") == deployment_id:
                    return Deployment.from_view(d)
        raise BasaltError(404, f"no deployment {deployment_id!r}", type="not_found_error",
                          code="deployment_not_found")
    return read


class calls:
    """Every call of the API, described once for both clients."""

    @staticmethod
    def models() -> Call[list[Model]]:
        return Call("GET", "/v1/models", lambda d: [Model.from_view(m) for m in d["models"]])

    @staticmethod
    def model(name: str) -> Call[Model]:
        return Call("GET", _m(name), Model.from_view)

    @staticmethod
    def delete_model(name: str) -> Call[dict[str, Any]]:
        return Call("DELETE", _m(name), dict)

    @staticmethod
    def deployments(model: str) -> Call[list[Deployment]]:
        return Call("GET", f"{_m(model)}/deployments",
                    lambda d: [Deployment.from_view(x) for x in d["deployments"]])

    @staticmethod
    def find_deployment(deployment_id: str) -> Call[Deployment]:
        return Call("GET", "/v1/models", _find(deployment_id))

    @staticmethod
    def deployment(model: str, deployment_id: str) -> Call[Deployment]:
        return Call("GET", _d(model, deployment_id), Deployment.from_view)

    @staticmethod
    def create_deployment(model: str, spec: Mapping[str, Any] | Any) -> Call[Deployment]:
        return Call("POST", f"{_m(model)}/deployments", Deployment.from_view, _spec(spec))

    @staticmethod
    def apply_deployment(model: str, spec: Mapping[str, Any] | Any) -> Call[Applied]:
        body = _spec(spec)
        return Call("PUT", _d(model, str(body["id"])), Applied.from_view, body)

    @staticmethod
    def delete_deployment(model: str, deployment_id: str) -> Call[dict[str, Any]]:
        return Call("DELETE", _d(model, deployment_id), dict)

    @staticmethod
    def action(model: str, deployment_id: str, verb: str, body: Any = None) -> Call[Deployment]:
        """activate, deactivate, wake, scale: each answers the deployment view."""
        return Call("POST", f"{_d(model, deployment_id)}/{verb}", Deployment.from_view, body)

    @staticmethod
    def promote(model: str, deployment_id: str, environment: str) -> Call[Promoted]:
        if environment == "production":  # creates the environment when the model has none
            return Call("POST", f"{_d(model, deployment_id)}/promote", Promoted.from_view)
        return Call("POST", f"{_m(model)}/environments/{quote(environment, safe='')}/promote",
                    Promoted.from_view, {"deployment_id": deployment_id})

    @staticmethod
    def autoscaling(model: str, deployment_id: str, patch: Mapping[str, Any]) -> Call[Deployment]:
        return Call("PATCH", f"{_d(model, deployment_id)}/autoscaling_settings",
                    Deployment.from_view, dict(patch))

    @staticmethod
    def environments(model: str) -> Call[list[Environment]]:
        return Call("GET", f"{_m(model)}/environments",
                    lambda d: [build(Environment, e) for e in d["environments"]])

    @staticmethod
    def create_environment(model: str, name: str, deployment_id: str) -> Call[Environment]:
        return Call("POST", f"{_m(model)}/environments", lambda d: build(Environment, d),
                    {"name": name, "deployment_id": deployment_id})

    @staticmethod
    def clusters() -> Call[list[Cluster]]:
        return Call("GET", "/v1/clusters", lambda d: [build(Cluster, c) for c in d["clusters"]])

    @staticmethod
    def chat(model: str, messages: Sequence[Mapping[str, Any]], **kw: Any) -> Call[dict[str, Any]]:
        body = {"model": model, "messages": list(messages), **kw}
        return Call("POST", "/v1/chat/completions", dict, body, inference=True)

    @staticmethod
    def predict(model: str, payload: Any) -> Call[Any]:
        return Call("POST", f"{_m(model)}/predict", lambda d: d, payload, inference=True)


def read_response(call: Call[T], r: httpx.Response) -> T:
    """The result of `call` from its answer, or BasaltError with the error body's fields."""
    if r.status_code >= 400:
        err: dict[str, Any] = {}
        try:
            got = r.json()
            err = got.get("error") or {} if isinstance(got, dict) else {}
        except ValueError:
            pass
        raise BasaltError(r.status_code, str(err.get("message") or r.text or r.reason_phrase),
                          err.get("param"), err.get("type"), err.get("code"))
    if r.headers.get("content-type", "").startswith("application/x-ndjson"):
        return call.read([json.loads(line) for line in r.text.splitlines() if line.strip()])
    return call.read(r.json())
