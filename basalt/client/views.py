"""The SDK's results: dataclasses read from the API's JSON views, each keeping the whole view in
`raw` so that a field the server adds later is there before this module names it (no I/O)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")


def build(cls: type[T], data: Mapping[str, Any], **nested: Any) -> T:
    """`cls` from the fields of `data` it names (the rest stays in `raw`)."""
    make: Any = cls
    names = {f.name for f in dataclasses.fields(make)} - {"raw", *nested}
    known = {k: data[k] for k in names if k in data and data[k] is not None}
    return make(**known, **nested, raw=dict(data))  # type: ignore[no-any-return]


@dataclass(slots=True)
class Health:
    """Why a deployment serves or not: ok, starting, rolling, failed, unplaced, inactive,
    scaled_to_zero ("" from a server that does not say)."""

    state: str = ""
    reason: str = ""
    failures: int = 0
    first_error: str = ""
    phase: str = ""
    retry_at: float | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Replica:
    id: str = ""
    state: str = ""
    region: str = ""
    zone: str = ""
    cluster: str = ""
    grpc_address: str = ""
    metrics_address: str = ""
    engine: str = ""
    owner: str = ""
    spec_revision: str = ""
    weights_revision: str = ""
    heartbeat_ts: float = 0.0
    started_ts: float = 0.0
    ready_ts: float = 0.0
    start: dict[str, Any] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Deployment:
    """A deployment view. `replicas` is filled by the one-deployment calls (get, create,
    apply, scale, ...); lists carry `replica_count` only."""

    id: str
    model: str
    status: str = ""
    kind: str = ""
    desired_replicas: int = 0
    active_replica_count: int = 0
    replica_count: int = 0
    environments: list[str] = field(default_factory=list)
    replicas: list[Replica] = field(default_factory=list)
    health: Health = field(default_factory=Health)
    spec_revision: str = ""
    spec: dict[str, Any] = field(default_factory=dict)
    autoscaling_settings: dict[str, Any] | None = None
    autoscaler: dict[str, Any] | None = None
    created_ts: float = 0.0
    generation: int = 0
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, data: Mapping[str, Any]) -> Deployment:
        return build(cls, data, replicas=[build(Replica, r) for r in data.get("replicas") or []],
                      health=build(Health, data.get("health") or {}))


@dataclass(slots=True)
class Change:
    """One field PUT changed (`engine_args.max_model_len` for a key of a map)."""

    field: str
    old: Any = None
    new: Any = None
    raw: dict[str, Any] = dataclasses.field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Applied:
    """What PUT did: the deployment as it is now, whether it was created, which fields changed,
    and whether the change replaces replicas (a rollout, one at a time)."""

    deployment: Deployment
    created: bool
    changes: list[Change]
    rollout: bool

    @classmethod
    def from_view(cls, data: Mapping[str, Any]) -> Applied:
        return cls(Deployment.from_view(data), bool(data.get("created")),
                   [build(Change, c) for c in data.get("changes") or []],
                   bool(data.get("rollout")))


@dataclass(slots=True)
class Environment:
    name: str
    model: str
    deployment_id: str = ""
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Model:
    name: str
    production_deployment_id: str | None = None
    development_deployment_id: str | None = None
    environments: list[Environment] = field(default_factory=list)
    deployments: list[Deployment] = field(default_factory=list)
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_view(cls, data: Mapping[str, Any]) -> Model:
        return build(cls, data,
                      environments=[build(Environment, e) for e in data.get("environments") or []],
                      deployments=[Deployment.from_view(d) for d in data.get("deployments") or []])


@dataclass(slots=True)
class Cluster:
    name: str
    provider: str = ""
    cloud: str = ""
    region: str = ""
    zone: str = ""
    accelerator: str = ""
    capacity: int = 0
    used: int = 0
    up: bool = True
    price_per_hour: float = 0.0
    blocked: dict[str, Any] | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass(slots=True)
class Promoted:
    environment: Environment
    deployment: Deployment
    previous_deployment_id: str | None
    scaled_down_deployment_id: str | None

    @classmethod
    def from_view(cls, data: Mapping[str, Any]) -> Promoted:
        return cls(build(Environment, data["environment"]),
                   Deployment.from_view(data["deployment"]),
                   data.get("previous_deployment_id"), data.get("scaled_down_deployment_id"))
