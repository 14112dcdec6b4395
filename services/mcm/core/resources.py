"""Deployments API core: request bodies, transitions over records, response views (no I/O).

Each transition is a pure function `record -> new record` that raises an `ApiError` when the
change is not allowed, so the adapter validates before it writes and can re-apply the same
function to a fresh read when a compare-and-set loses a race.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from google.protobuf.json_format import MessageToDict
from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model

from basalt.deployfile import Autoscaling, Deployment, Environment
from basalt.pb import deploy_pb2, events_pb2
from basalt.weights import local_path
from services.mcm.core.api_errors import (
    DeploymentExists,
    DeploymentInactive,
    DevelopmentExists,
    EnvironmentsPointAt,
    InvalidRequest,
    NotFound,
)
from services.mcm.core.health import ControlState, health
from services.mcm.core.provider import engine_arg_problem
from services.mcm.core.rollout import Change, changes, spec_dict, spec_revision

PRODUCTION = "production"
DEVELOPMENT = "development"
PUBLISHED = "published"
ACTIVE = deploy_pb2.DEPLOYMENT_STATUS_ACTIVE
INACTIVE = deploy_pb2.DEPLOYMENT_STATUS_INACTIVE
MAX_REPLICAS = 1000
# Environment keys are "<model>.<env>" in NATS KV, whose keys allow [-/_=.a-zA-Z0-9]; a model
# name may hold '/' (as in "org/model") and '.', never two in a row or at an end.
MODEL_NAME = re.compile(r"^[A-Za-z0-9_=-]+(?:[./][A-Za-z0-9_=-]+)*$")
# Path segments the API's own routes use after a model name.
RESERVED_SEGMENTS = frozenset({"deployments", "environments"})

Record = deploy_pb2.DeploymentRecord
EnvRecord = deploy_pb2.EnvironmentRecord


def _without_model(cls: type[BaseModel], name: str) -> type[BaseModel]:
    fields: Any = {n: (f.annotation, f) for n, f in cls.model_fields.items() if n != "model"}
    return create_model(name, __config__=ConfigDict(extra="forbid"), **fields)


# A Deployment (basalt.deployfile) without `model`: the path names the model.
DeploymentBody = _without_model(Deployment, "DeploymentBody")
# An Environment without `model`: {"name", "deployment_id"}.
EnvironmentBody = _without_model(Environment, "EnvironmentBody")


class AutoscalingPatch(BaseModel):
    """Fields to change; ranges are those of `Autoscaling`, checked on the merged settings."""

    model_config = ConfigDict(extra="forbid")
    min_replica: int | None = None
    max_replica: int | None = None
    autoscaling_window: int | None = None
    scale_down_delay: int | None = None
    concurrency_target: int | None = None
    target_utilization_percentage: int | None = None
    target_in_flight_tokens: int | None = None
    scaling_mode: str | None = None
    panic_window: int | None = None
    panic_threshold_percentage: int | None = None
    ttft_p90_target_ms: float | None = None
    itl_p90_target_ms: float | None = None
    cold_start_lead: bool | None = None
    scale_down_step: int | None = None


class ScaleBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    replicas: int = Field(ge=0, le=MAX_REPLICAS)


class PromoteBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deployment_id: str = Field(min_length=1)


# -- validation ----------------------------------------------------------------------------


def describe_errors(errors: Iterable[Any], prefix: str = "") -> InvalidRequest:
    """One InvalidRequest from pydantic errors; the message names every field, `param` the first."""
    parts, params = [], []
    for err in errors:
        loc = [str(x) for x in err.get("loc", ()) if x != "body"]
        where = ".".join(([prefix] if prefix else []) + loc) or "body"
        params.append(where)
        msg = "unknown field" if err.get("type") == "extra_forbidden" else err.get("msg", "invalid")
        parts.append(f"{where}: {msg}")
    return InvalidRequest("; ".join(parts) or "invalid request body", params[0] if params else None)


def check_model_name(model: str) -> str:
    if not MODEL_NAME.match(model) or len(model) > 128:
        raise InvalidRequest(f"model: {model!r} is not a model name (letters, digits, '_', '-', "
                             f"'=', single '.' or '/' between them; at most 128)", "model")
    if RESERVED_SEGMENTS & set(model.split("/")):
        raise InvalidRequest(f"model: {model!r} may not have a segment named "
                             f"{sorted(RESERVED_SEGMENTS)}", "model")
    return model


def check_autoscaling(settings: Autoscaling, prefix: str) -> None:
    if settings.min_replica > settings.max_replica:
        raise InvalidRequest(
            f"{prefix}min_replica ({settings.min_replica}) must be <= {prefix}max_replica "
            f"({settings.max_replica})", f"{prefix}min_replica")
    if settings.scaling_mode == "sla" and settings.ttft_p90_target_ms <= 0:
        raise InvalidRequest(
            f"{prefix}ttft_p90_target_ms: scaling_mode sla needs a TTFT p90 target (> 0 ms)",
            f"{prefix}ttft_p90_target_ms")


# -- transitions ---------------------------------------------------------------------------


def new_deployment(model: str, body: BaseModel, now: float, existing: Sequence[Record]) -> Record:
    """The record a create request makes; an inactive one wants 0 replicas."""
    check_model_name(model)
    try:
        dep = Deployment.model_validate({**body.model_dump(), "model": model})
    except ValidationError as e:
        raise describe_errors(e.errors()) from None
    if dep.autoscaling is not None:
        check_autoscaling(dep.autoscaling, "autoscaling.")
    for key in sorted(dep.engine_args):
        if problem := engine_arg_problem(key):
            raise InvalidRequest(f"engine_args.{key}: {problem}", f"engine_args.{key}")
    check_tokenizer_source(dep)
    for rec in existing:
        if rec.id == dep.id:
            raise DeploymentExists(dep.id)
        if dep.kind == DEVELOPMENT and rec.model == model and rec.kind == DEVELOPMENT:
            raise DevelopmentExists(model, rec.id)
    rec = dep.to_record(created_ts=now)
    if not dep.active:
        rec.desired_replicas = 0
    return rec


def apply_update(old: Record, model: str, body: BaseModel, now: float,
                 existing: Sequence[Record]) -> tuple[Record, list[Change]]:
    """The record `PUT .../deployments/{id}` makes of an existing deployment so that it says
    what `body` says, and what changed. Every field applies: spec fields (routing, queue,
    backpressure, autoscaling, engine settings, ...), `active` (as activate / deactivate do)
    and `replicas` (a fixed count: set; an autoscaled deployment keeps the autoscaler's count,
    brought within the new bounds). `kind` cannot change here (promote publishes)."""
    others = [r for r in existing if r.id != old.id]
    fresh = new_deployment(model, body, now, others)
    if fresh.kind != old.kind:
        raise InvalidRequest(f"kind: {old.id} is {old.kind}; a deployment's kind cannot "
                             "change (promote a development deployment to publish it)", "kind")
    out = _copy(fresh)
    out.created_ts, out.generation, out.retry_ts = old.created_ts, old.generation, old.retry_ts
    was_active = old.status == ACTIVE
    if out.status == ACTIVE and was_active and out.spec.HasField("autoscaling"):
        lo, hi = out.spec.autoscaling.min_replica, out.spec.autoscaling.max_replica
        out.desired_replicas = min(max(old.desired_replicas, lo), max(hi, lo))
    return out, changes(old, out)


def retry(rec: Record, now: float) -> Record:
    """Activate, and mark the deployment for a new try: the control plane forgets the start
    failures recorded before the mark (a FAILED deployment launches again)."""
    out = activate(rec)
    out.retry_ts = now
    return out


def loses_development_race(my_revision: int, rivals: Iterable[int]) -> bool:
    """After two API processes both created a development deployment for one model: the one
    written later (higher KV revision) steps back. A rival's revision only grows with updates,
    so one seen below ours was surely created first."""
    return any(rev < my_revision for rev in rivals)


def production_environment(rec: Record, envs: Iterable[EnvRecord]) -> EnvRecord | None:
    """The `production` environment to create for a new published deployment, if its model
    has none yet."""
    if rec.kind != PUBLISHED:
        return None
    if any(e.model == rec.model and e.name == PRODUCTION for e in envs):
        return None
    return EnvRecord(model=rec.model, name=PRODUCTION, deployment_id=rec.id)


def of_model(rec: Record | None, model: str, deployment_id: str) -> Record:
    if rec is None or rec.model != model:
        raise NotFound("deployment", deployment_id, model)
    return rec


def environments_of(rec: Record, envs: Iterable[EnvRecord]) -> list[str]:
    return sorted(e.name for e in envs if e.model == rec.model and e.deployment_id == rec.id)


def check_deletable(rec: Record, envs: Iterable[EnvRecord]) -> None:
    if names := environments_of(rec, envs):
        raise EnvironmentsPointAt(rec.id, names)


def _copy(rec: Record) -> Record:
    out = Record()
    out.CopyFrom(rec)
    return out


def serving_floor(rec: Record) -> int:
    """Replicas a deployment that should serve wants at least: max(1, min_replica)."""
    return max(1, rec.spec.autoscaling.min_replica)


def activate(rec: Record) -> Record:
    out = _copy(rec)
    out.status = ACTIVE
    out.desired_replicas = max(rec.desired_replicas, serving_floor(rec))
    return out


def deactivate(rec: Record) -> Record:
    out = _copy(rec)
    out.status = INACTIVE
    out.desired_replicas = 0
    return out


def scale(rec: Record, replicas: int) -> Record:
    """Set desired replicas by hand (0..1000, not bounded by min/max: the autoscaler may
    move it back within them later)."""
    if rec.status != ACTIVE:
        raise DeploymentInactive(rec.id, "scale")
    out = _copy(rec)
    out.desired_replicas = replicas
    return out


def wake_check(rec: Record) -> Record:
    """A deployment that can be woken: active (else 409)."""
    if rec.status != ACTIVE:
        raise DeploymentInactive(rec.id, "wake")
    return rec


def decision_view(d: deploy_pb2.AutoscalerDecision | None) -> dict[str, Any] | None:
    if d is None:
        return None
    return {"desired": d.desired, "reason": d.reason, "ts": d.ts, "panic": d.panic,
            "holder": d.holder}


def autoscaling_dict(rec: Record) -> dict[str, Any] | None:
    """The deployment's autoscaling settings; None: not autoscaled (a fixed count)."""
    if not rec.spec.HasField("autoscaling"):
        return None
    return {name: getattr(rec.spec.autoscaling, name) for name in Autoscaling.model_fields}


def patch_autoscaling(rec: Record, patch: AutoscalingPatch) -> Record:
    """Merge the patch into the settings and validate the result. When min or max changes,
    an active deployment's desired replicas are brought within [min, max]."""
    changes = patch.model_dump(exclude_unset=True)
    try:
        settings = Autoscaling.model_validate({**(autoscaling_dict(rec) or {}), **changes})
    except ValidationError as e:
        raise describe_errors(e.errors()) from None
    check_autoscaling(settings, "")
    out = _copy(rec)
    out.spec.autoscaling.CopyFrom(settings.to_proto())
    if out.status == ACTIVE and {"min_replica", "max_replica"} & changes.keys():
        lo, hi = settings.min_replica, settings.max_replica
        out.desired_replicas = min(max(out.desired_replicas, lo), hi)
    return out


def promote_target(rec: Record) -> Record:
    """The deployment an environment moves to: active (else 409), published, and wanting at
    least max(1, min_replica) replicas."""
    if rec.status != ACTIVE:
        raise DeploymentInactive(rec.id, "promote")
    out = _copy(rec)
    out.kind = PUBLISHED
    out.desired_replicas = max(rec.desired_replicas, serving_floor(rec))
    return out


def retire(rec: Record) -> Record:
    """The deployment an environment left: down to its min_replica (0 by default)."""
    out = _copy(rec)
    out.desired_replicas = min(rec.desired_replicas, rec.spec.autoscaling.min_replica)
    return out


def to_retire(env: EnvRecord, new_id: str, envs: Iterable[EnvRecord]) -> str | None:
    """The deployment to scale down after `env` moves to `new_id`: its old one, unless it is
    the new one or another environment still serves it."""
    old_id = env.deployment_id
    if not old_id or old_id == new_id:
        return None
    moved = (env.model, env.name)
    others = [e for e in envs if e.deployment_id == old_id and (e.model, e.name) != moved]
    return None if others else old_id


# -- views ---------------------------------------------------------------------------------


def status_name(status: int) -> str:
    if status == ACTIVE:
        return "active"
    return "inactive" if status == INACTIVE else "unspecified"


def replica_view(rep: events_pb2.ReplicaRecord, revision: str = "") -> dict[str, Any]:
    state = events_pb2.ReplicaState.Name(rep.state).removeprefix("REPLICA_STATE_").lower()
    return {"id": rep.replica_id, "state": state, "spec_revision": revision,
            "region": rep.region, "zone": rep.zone,
            "cluster": rep.cluster, "grpc_address": rep.grpc_address,
            "metrics_address": rep.metrics_address, "engine": rep.engine,
            "owner": rep.owner, "heartbeat_ts": rep.heartbeat_ts, "started_ts": rep.started_ts,
            "ready_ts": rep.ready_ts, "weights_revision": rep.weights_revision,
            "start": MessageToDict(rep.start, preserving_proto_field_name=True)}


def deployment_view(rec: Record, envs: Sequence[EnvRecord],
                    replicas: Sequence[events_pb2.ReplicaRecord], detail: bool = False,
                    decisions: Mapping[str, deploy_pb2.AutoscalerDecision] | None = None,
                    control: ControlState | None = None, now: float = 0.0) -> dict:
    """A deployment as the API shows it; `replicas` are every replica record (this
    deployment's are picked), `control` what the reconciler knows (core/health.py)."""
    spec = spec_dict(rec.spec)
    spec.pop("autoscaling", None)
    names = environments_of(rec, envs)
    mine = [r for r in replicas if r.deployment == rec.id]
    control = control or ControlState()
    revision = spec_revision(rec.spec)
    view = {
        "id": rec.id, "model": rec.model, "kind": rec.kind, "status": status_name(rec.status),
        "is_development": rec.kind == DEVELOPMENT, "is_production": PRODUCTION in names,
        "environments": names, "desired_replicas": rec.desired_replicas,
        "active_replica_count": sum(r.state == events_pb2.REPLICA_STATE_READY for r in mine),
        "replica_count": len(mine), "autoscaling_settings": autoscaling_dict(rec),
        "spec": spec, "created_ts": rec.created_ts, "generation": rec.generation,
        "autoscaler": decision_view((decisions or {}).get(rec.id)),
        "spec_revision": revision,
        "health": health(rec, mine, revision, control, now),
    }
    if detail:
        view["replicas"] = [replica_view(r, control.revisions.get(r.replica_id, ""))
                            for r in sorted(mine, key=lambda r: r.replica_id)]
    return view


def environment_view(env: EnvRecord) -> dict[str, str]:
    return {"name": env.name, "model": env.model, "deployment_id": env.deployment_id}


def model_names(deployments: Iterable[Record], envs: Iterable[EnvRecord]) -> list[str]:
    return sorted({d.model for d in deployments} | {e.model for e in envs})


def model_view(model: str, deployments: Sequence[Record], envs: Sequence[EnvRecord],
               replicas: Sequence[events_pb2.ReplicaRecord],
               decisions: Mapping[str, deploy_pb2.AutoscalerDecision] | None = None,
               control: ControlState | None = None, now: float = 0.0) -> dict[str, Any]:
    """A model: its deployments, environments, and which deployment production serves."""
    mine = [d for d in deployments if d.model == model]
    my_envs = [e for e in envs if e.model == model]
    production = next((e.deployment_id for e in my_envs if e.name == PRODUCTION), None)
    development = next((d.id for d in mine if d.kind == DEVELOPMENT), None)
    return {"name": model, "production_deployment_id": production,
            "development_deployment_id": development,
            "environments": [environment_view(e) for e in my_envs],
            "deployments": [deployment_view(d, my_envs, replicas, decisions=decisions,
                                            control=control, now=now) for d in mine]}


def check_tokenizer_source(dep: Deployment) -> None:
    """The router tokenizes prompts with the model's tokenizer, read from `model_path` or a
    local weights folder; a remote weights source alone would leave it none (prompts would be
    tokenized wrongly), so such a deployment is refused with the fix."""
    if dep.engine not in ("vllm", "trtllm") or dep.weights is None or dep.model_path:
        return
    if local_path(dep.weights.uri):
        return
    raise InvalidRequest(
        "model_path: a deployment whose weights come from a remote source "
        f"({dep.weights.uri.split('://', 1)[0]}://) needs model_path naming a folder with the "
        "tokenizer files (tokenizer.json, tokenizer_config.json): the router tokenizes prompts",
        "model_path")


def check_model_roots(rec: Record, resolved: dict[str, str], roots: Sequence[str]) -> None:
    """Refuse a deployment whose model or LoRA paths lie outside every allow-listed root: a
    deployment starts code from its model path (a python model's `model.py`, a vLLM model's
    remote code), so only folders the operator chose may be named. `resolved` maps each path
    as given to its real path (symlinks and `..` followed: the adapter resolves them)."""
    named = [("model_path", rec.spec.model_path)]
    named += [(f"loras[{i}].path", x.path) for i, x in enumerate(rec.spec.loras)]
    if rec.spec.HasField("weights") and local_path(rec.spec.weights.uri):
        named.append(("weights.uri", local_path(rec.spec.weights.uri)))
    for param, path in named:
        if not path:
            continue
        real = resolved.get(path, "")
        if not any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots):
            raise InvalidRequest(
                f"{param}: {path!r} is outside the allowed model roots (the control plane's "
                "--model-roots)", param)
