"""The control plane's deployments API: models, deployments, environments, clusters (does I/O:
FastAPI over the NATS KV store).

All state lives in NATS KV (`Store`); the router watches the same buckets, so every change here
reaches it with no restart. A write is validated by a pure transition (`resources`) before
anything is written, and applied with compare-and-set: on `store.RevisionMismatch` the record is read
again and the transition re-applied, up to RETRIES times, then 409 with nothing written.
The desired replica count set by POST .../scale travels as a `ScaleCommand` on the scale
stream (as the autoscaler's and the CLI's do) and the answer waits until it is applied; promote,
activate and deactivate change a deployment's lifecycle and its count in one compare-and-set
write of the record. Operations that touch several records (create, delete, promote) run one
at a time in this process and order their writes so that a crash between two leaves a state that serves traffic
and that repeating the request completes.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.js.errors import InvalidKeyError
from nats.js.kv import KeyValue
from starlette.exceptions import HTTPException

from basalt import bus, engine_check, subjects
from basalt.apikeys import MANAGEMENT, KeyStoreUnavailable, KeyVerifier, key_from_header
from basalt.log import get_logger
from basalt.pb import deploy_pb2, events_pb2
from basalt.scalestream import publish_scale
from basalt.weights import local_path
from services.mcm.core import resources as res
from services.mcm.core.api_errors import (
    ApiError,
    Conflict,
    DeploymentExists,
    DevelopmentExists,
    EnvironmentExists,
    Forbidden,
    InvalidId,
    InvalidRequest,
    MethodNotAllowed,
    NotFound,
    RouteNotFound,
    ScaleNotApplied,
    Unauthorized,
    WriteConflict,
    key_allows_path,
)
from services.mcm.core.health import ControlState
from services.mcm.core.resources import (
    AutoscalingPatch,
    DeploymentBody,
    EnvironmentBody,
    PromoteBody,
    ScaleBody,
)
from services.mcm.core.rollout import needs_rollout
from services.mcm.core.scaling import settled

from .scale import APPLIED_BUCKET, last_applied
from .store import RevisionMismatch, Store

log = get_logger(__name__)
OPEN_PATHS = ("/health",)
RETRIES = 5
# How long POST .../scale waits for the scale consumer to apply its command, and how often
# it looks.
SCALE_WAIT_S = 10.0
SCALE_POLL_S = 0.02
# How long a create or update waits for the reconciler to plan with it.
TICK_WAIT_S = 3.0
Record = deploy_pb2.DeploymentRecord
EnvRecord = deploy_pb2.EnvironmentRecord
Transition = Callable[[Record], Record]


@dataclass(slots=True)
class _Ctx:
    store: Store
    nc: Client
    # Serializes this process's multi-record operations (compare-and-set guards each record).
    lock: asyncio.Lock
    replicas_kv: KeyValue | None = None
    applied_kv: KeyValue | None = None
    decisions_kv: KeyValue | None = None
    # Real paths a deployment's model and LoRA paths must lie under (None: any path).
    model_roots: tuple[str, ...] | None = None
    # What the reconciler knows (start failures, unplaced, replica revisions); None: nothing.
    health: Callable[[], ControlState] | None = None

    def control(self) -> ControlState:
        return self.health() if self.health is not None else ControlState()


def create_app(store: Store, *, nc: Client, verifier: KeyVerifier | None = None,
               cluster_status: Callable[[], list[dict]] | None = None,
               model_roots: Sequence[str] | None = None,
               health: Callable[[], ControlState] | None = None) -> FastAPI:
    """The API app; with `verifier`, every route but /health wants an API key; with
    `model_roots`, a deployment may name model and LoRA paths only under them; `health`
    gives the reconciler's view (failures, unplaced, revisions) shown in each deployment."""
    app = FastAPI(title="basalt control plane", version=_version(),
                  description="Deployments, environments, scale and clusters. Every route "
                  "but /health wants a management API key (`Authorization: Bearer <key>`).")
    roots = None if model_roots is None else tuple(os.path.realpath(r) for r in model_roots)
    ctx = _Ctx(store, nc, asyncio.Lock(), model_roots=roots, health=health)
    _install_errors(app)
    _install_auth(app, verifier)

    @app.get("/health")
    async def health_check() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/v1/clusters")
    async def clusters() -> dict[str, Any]:
        return {"clusters": cluster_status() if cluster_status else []}

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        deps, envs = await ctx.store.list(), await ctx.store.list_environments()
        reps, decisions = await _replicas(ctx), await _decisions(ctx)
        control, now = ctx.control(), time.time()
        return {"models": [res.model_view(m, deps, envs, reps, decisions, control, now)
                           for m in res.model_names(deps, envs)]}

    _deployment_routes(app, ctx)
    _environment_routes(app, ctx)
    # Last: `{model:path}` would otherwise swallow the routes above.
    _model_routes(app, ctx)
    return app


# -- routes --------------------------------------------------------------------------------


def _deployment_routes(app: FastAPI, ctx: _Ctx) -> None:
    base = "/v1/models/{model:path}/deployments"

    @app.post(base, status_code=201)
    async def create_deployment(
        model: str, body: DeploymentBody,  # type: ignore[valid-type]
    ) -> dict:
        return await _create(ctx, model, body)

    @app.get(base)
    async def list_deployments(model: str) -> dict:
        deps, envs = await _model_state(ctx, model)
        reps = await _replicas(ctx)
        decisions = await _decisions(ctx)
        control, now = ctx.control(), time.time()
        return {"deployments": [res.deployment_view(d, envs, reps, decisions=decisions,
                                                    control=control, now=now) for d in deps]}

    @app.get(base + "/{deployment_id}")
    async def get_deployment(model: str, deployment_id: str) -> dict:
        return await _view(ctx, await _get(ctx, model, deployment_id))

    @app.put(base + "/{deployment_id}")
    async def apply_deployment(
        model: str, deployment_id: str, body: DeploymentBody,  # type: ignore[valid-type]
        response: Response,
    ) -> dict:
        """Create or update the deployment so that it says what `body` says (every field);
        the answer lists what changed and whether replicas are rolled."""
        out = await _apply(ctx, model, deployment_id, body)
        response.status_code = 201 if out["created"] else 200
        return out

    @app.delete(base + "/{deployment_id}")
    async def delete_deployment(model: str, deployment_id: str) -> dict:
        async with ctx.lock:
            envs = await ctx.store.list_environments()
            res.check_deletable(await _get(ctx, model, deployment_id), envs)
            # Inactive first: a crash before the delete leaves a deployment that serves nothing.
            await _update(ctx, model, deployment_id, res.deactivate)
            await ctx.store.delete(deployment_id)
            await _forget_scale(ctx, deployment_id)
        log.info("deployment_deleted", deployment=deployment_id, model=model)
        return {"id": deployment_id, "model": model, "deleted": True}

    @app.post(base + "/{deployment_id}/activate")
    async def activate(model: str, deployment_id: str) -> dict:
        """Activate; a FAILED deployment is also marked to try again."""
        failed = ctx.control().failures.get(deployment_id)
        change = (lambda r: res.retry(r, time.time())) if failed else res.activate
        return await _view(ctx, await _update(ctx, model, deployment_id, change))

    @app.post(base + "/{deployment_id}/deactivate")
    async def deactivate(model: str, deployment_id: str) -> dict:
        return await _view(ctx, await _update(ctx, model, deployment_id, res.deactivate))

    @app.patch(base + "/{deployment_id}/autoscaling_settings")
    async def autoscaling(model: str, deployment_id: str, body: AutoscalingPatch) -> dict:
        rec = await _update(ctx, model, deployment_id, lambda r: res.patch_autoscaling(r, body))
        return await _view(ctx, rec)

    @app.post(base + "/{deployment_id}/scale")
    async def scale(model: str, deployment_id: str, body: ScaleBody) -> dict:
        return await _view(ctx, await _scale(ctx, model, deployment_id, body.replicas))

    @app.post(base + "/{deployment_id}/promote")
    async def promote(model: str, deployment_id: str) -> dict:
        return await _promote(ctx, model, res.PRODUCTION, deployment_id, create_env=True)

    @app.post(base + "/{deployment_id}/wake")
    async def wake(model: str, deployment_id: str) -> dict:
        return await _view(ctx, await _wake(ctx, model, deployment_id))


def _environment_routes(app: FastAPI, ctx: _Ctx) -> None:
    base = "/v1/models/{model:path}/environments"

    @app.get(base)
    async def list_environments(model: str) -> dict:
        _, envs = await _model_state(ctx, model)
        return {"environments": [res.environment_view(e) for e in envs]}

    @app.post(base, status_code=201)
    async def create_environment(
        model: str, body: EnvironmentBody,  # type: ignore[valid-type]
    ) -> dict:
        res.check_model_name(model)
        name, deployment_id = body.name, body.deployment_id  # type: ignore[attr-defined]
        async with ctx.lock:
            if await ctx.store.get_environment(model, name) is not None:
                raise EnvironmentExists(model, name)
            await _get(ctx, model, deployment_id)
            env = EnvRecord(model=model, name=name, deployment_id=deployment_id)
            await ctx.store.put_environment(env)
        return res.environment_view(env)

    @app.get(base + "/{name}")
    async def get_environment(model: str, name: str) -> dict:
        env = await ctx.store.get_environment(model, name)
        if env is None:
            raise NotFound("environment", name, model)
        return res.environment_view(env)

    @app.post(base + "/{name}/promote")
    async def promote_environment(model: str, name: str, body: PromoteBody) -> dict:
        return await _promote(ctx, model, name, body.deployment_id, create_env=False)


def _model_routes(app: FastAPI, ctx: _Ctx) -> None:
    @app.get("/v1/models/{model:path}")
    async def get_model(model: str) -> dict:
        deps, envs = await _model_state(ctx, model)
        return res.model_view(model, deps, envs, await _replicas(ctx), await _decisions(ctx))

    @app.delete("/v1/models/{model:path}")
    async def delete_model(model: str) -> dict:
        """Deactivates every deployment (traffic stops), then deletes the environments, then
        the deployments; a crash between steps leaves inactive deployments, which a repeat
        of the request deletes."""
        async with ctx.lock:
            deps, envs = await _model_state(ctx, model)
            for d in deps:
                await _update_if_present(ctx, model, d.id, res.deactivate)
            for e in envs:
                await ctx.store.delete_environment(model, e.name)
            for d in deps:
                await ctx.store.delete(d.id)
                await _forget_scale(ctx, d.id)
        log.info("model_deleted", model=model, deployments=[d.id for d in deps])
        return {"name": model, "deleted": True, "deployments": [d.id for d in deps],
                "environments": [e.name for e in envs]}


# -- operations ----------------------------------------------------------------------------


async def _create(ctx: _Ctx, model: str, body: Any) -> dict:
    """Creates the deployment, then (published, and the model has no `production`
    environment) the `production` environment pointing at it. A crash between the two
    leaves the model's only deployment, which the router serves under the model name anyway."""
    now = time.time()
    warnings = await _validate(ctx, model, body)
    async with ctx.lock:
        envs = await ctx.store.list_environments()
        rec = res.new_deployment(model, body, now, await ctx.store.list())
        _check_paths(ctx, rec)
        try:
            revision = await ctx.store.create(rec)
        except RevisionMismatch:
            raise DeploymentExists(rec.id) from None
        if rec.kind == res.DEVELOPMENT:
            await _settle_development_race(ctx, rec, revision)
        if env := res.production_environment(rec, envs):
            await ctx.store.put_environment(env)
            envs.append(env)
    log.info("deployment_created", deployment=rec.id, model=model, kind=rec.kind)
    await _next_tick(ctx)
    return {**await _view(ctx, rec), "warnings": warnings}


async def _apply(ctx: _Ctx, model: str, deployment_id: str, body: Any) -> dict:
    """PUT: create when absent (as POST), else update every field with compare-and-set."""
    if body.id != deployment_id:
        raise InvalidRequest(f"id: the body's id {body.id!r} is not the path's "
                             f"{deployment_id!r}", "id")
    found = await ctx.store.get(deployment_id)
    if found is None:
        view = await _create(ctx, model, body)
        return {**view, "created": True, "changes": [], "rollout": False}
    if found.record.model != model:
        raise DeploymentExists(deployment_id)
    warnings = await _validate(ctx, model, body)  # paths and engine checked once, here
    now = time.time()
    changed: list[Any] = []

    def apply(rec: Record) -> Record:  # re-applied by _update to a fresh read after a race
        new, found_changes = res.apply_update(rec, model, body, now, existing)
        changed[:] = found_changes
        return new

    async with ctx.lock:
        existing = await ctx.store.list()
        new = await _update(ctx, model, deployment_id, apply)
    if changed:
        await _next_tick(ctx)
    rollout = needs_rollout(changed) and new.status == res.ACTIVE
    log.info("deployment_updated", deployment=deployment_id, model=model,
             changes=[c.field for c in changed], rollout=rollout)
    return {**await _view(ctx, new), "created": False,
            "changes": [c.as_dict() for c in changed], "rollout": rollout, "warnings": warnings}


async def _validate(ctx: _Ctx, model: str, body: Any) -> list[str]:
    """Refuse, before anything is written or started, a deployment the engine could not run:
    the fields (422 naming the first), the model paths against the allowed roots, then what
    `basalt.engine_check` finds (the model folder holds what the engine loads; the engine
    arguments pass the engine's own parser: vLLM's, imported once, in a thread). Returns
    what could not be checked here, as warnings."""
    rec = res.new_deployment(model, body, time.time(), [])
    _check_paths(ctx, rec)
    found = await asyncio.to_thread(engine_check.problems, body.engine, body.model_path,
                                    body.engine_args)
    errors = [p for p in found if not p.warning]
    if errors:
        raise InvalidRequest("; ".join(f"{p.field}: {p.message}" for p in errors),
                             errors[0].field)
    return [f"{p.field}: {p.message}" for p in found if p.warning]


async def _next_tick(ctx: _Ctx) -> None:
    """Wait (up to TICK_WAIT_S) until the reconciler has planned with the write just made (it
    ticks on every deployment write), so the answer's health says at once what it found
    (e.g. unplaced: no capacity)."""
    start = ctx.control().ticks
    if start < 0:
        return
    deadline = time.monotonic() + TICK_WAIT_S
    while ctx.control().ticks < start + 2 and time.monotonic() < deadline:
        await asyncio.sleep(SCALE_POLL_S)


def _check_paths(ctx: _Ctx, rec: Record) -> None:
    if ctx.model_roots is None:
        return
    paths = [rec.spec.model_path, *(x.path for x in rec.spec.loras),
             local_path(rec.spec.weights.uri)]
    res.check_model_roots(rec, {p: os.path.realpath(p) for p in paths if p}, ctx.model_roots)


async def _forget_scale(ctx: _Ctx, deployment_id: str) -> None:
    """A deleted deployment's last applied scale command goes too (no record left behind)."""
    try:
        if ctx.applied_kv is None:
            ctx.applied_kv = await bus.kv_bucket(ctx.nc, APPLIED_BUCKET)
        await ctx.applied_kv.purge(deployment_id)
    except Exception as e:  # noqa: BLE001 - the deployment is gone; the marker is harmless
        log.warning("scale_marker_delete_failed", deployment=deployment_id,
                    error=str(e) or type(e).__name__)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("basalt")
    except PackageNotFoundError:
        return "0"


async def _settle_development_race(ctx: _Ctx, rec: Record, revision: int) -> None:
    """Two API processes may both pass the one-development-deployment check; the later
    write deletes itself and answers 409."""
    rivals = [d for d in await ctx.store.list()
              if d.model == rec.model and d.kind == res.DEVELOPMENT and d.id != rec.id]
    revisions = [v.revision for d in rivals if (v := await ctx.store.get(d.id)) is not None]
    if res.loses_development_race(revision, revisions):
        await ctx.store.delete(rec.id)
        raise DevelopmentExists(rec.model, rivals[0].id)


async def _promote(
    ctx: _Ctx, model: str, env_name: str, deployment_id: str, create_env: bool,
) -> dict:
    """Move environment `env_name` of `model` to deployment `deployment_id`.

    Writes, in this order: (1) the new deployment is made published with desired replicas
    >= max(1, min_replica) (it must be active: else 409, nothing written); (2) the environment
    record is switched to it; (3) the old deployment's desired replicas go down to its
    min_replica (0 by default), unless another environment still serves it. A crash after (1)
    leaves traffic on the old deployment and the new one scaling up, and a repeat completes
    the promotion; a crash after (2) leaves traffic on the new one and the old one running
    until scaled down by hand (a repeat finds the environment moved already).

    In-flight traffic: the router resolves a name per request from the environment record it
    watches, so requests that arrive after (2) go to the new deployment; while it has no READY
    replica they wait in the router's queue (up to queue_timeout_s, then 503; past queue_limit
    429), so promote a deployment whose replicas are up when that matters. Requests already on an
    old replica finish there: the control plane stops a replica with SIGTERM, and the runtime
    marks itself DRAINING (the router sends it nothing new) and finishes its in-flight
    requests (up to its drain_timeout, 30 s by default) before it exits.
    """
    res.check_model_name(model)
    async with ctx.lock:
        envs = await ctx.store.list_environments()
        env = next((e for e in envs if e.model == model and e.name == env_name), None)
        if env is None and not create_env:
            raise NotFound("environment", env_name, model)
        env = env or EnvRecord(model=model, name=env_name)
        new = await _update(ctx, model, deployment_id, res.promote_target)
        moved = EnvRecord(model=model, name=env_name, deployment_id=new.id)
        if env.deployment_id != new.id:
            await ctx.store.put_environment(moved)
        old_id = res.to_retire(env, new.id, envs)
        if old_id is not None:
            await _update_if_present(ctx, model, old_id, res.retire)
    log.info("promoted", model=model, environment=env_name, deployment=new.id, previous=old_id)
    return {"environment": res.environment_view(moved), "deployment": await _view(ctx, new),
            "previous_deployment_id": env.deployment_id or None,
            "scaled_down_deployment_id": old_id}


async def _scale(ctx: _Ctx, model: str, deployment_id: str, replicas: int) -> Record:
    """Refuse what cannot apply (unknown, inactive: nothing published), then publish a
    `ScaleCommand` (source "api") on the scale stream, the one path every writer of the
    desired count takes, and wait until the scale consumer applied it (or a newer one)."""
    found = await ctx.store.get(deployment_id)
    res.scale(res.of_model(found.record if found else None, model, deployment_id), replicas)
    cmd = await publish_scale(ctx.nc, deployment_id, replicas, source="api")
    if ctx.applied_kv is None:
        ctx.applied_kv = await bus.kv_bucket(ctx.nc, APPLIED_BUCKET)
    deadline = time.monotonic() + SCALE_WAIT_S
    while time.monotonic() < deadline:
        last, _ = await last_applied(ctx.applied_kv, deployment_id)
        if settled(cmd, last):
            now = await ctx.store.get(deployment_id)
            if now is not None:
                return now.record
        await asyncio.sleep(SCALE_POLL_S)
    raise ScaleNotApplied(deployment_id, cmd.command_id, SCALE_WAIT_S)


async def _wake(ctx: _Ctx, model: str, deployment_id: str) -> Record:
    """Baseten's wake: tell the autoscaler (so it holds the replica for its scale-down delay)
    and, at zero, scale to max(1, min_replica) now (so it wakes with no autoscaler too)."""
    rec = res.wake_check(await _get(ctx, model, deployment_id))
    msg = deploy_pb2.WakeRequest(deployment_id=deployment_id, source="api", ts=time.time())
    await ctx.nc.publish(subjects.wake(deployment_id), msg.SerializeToString())
    log.info("wake", deployment=deployment_id, desired=rec.desired_replicas)
    if rec.desired_replicas == 0:
        return await _scale(ctx, model, deployment_id, res.serving_floor(rec))
    return rec


async def _update(ctx: _Ctx, model: str, deployment_id: str, change: Transition) -> Record:
    """Read, apply `change` (pure; may refuse), compare-and-set; retry on a lost race."""
    for attempt in range(RETRIES):
        found = await ctx.store.get(deployment_id)
        rec = res.of_model(found.record if found else None, model, deployment_id)
        new = change(rec)
        if new == rec:
            return rec  # nothing to change: no write, generation unchanged
        try:
            await ctx.store.update(new, found.revision)  # type: ignore[union-attr]
            return new
        except RevisionMismatch:
            await asyncio.sleep(0.005 * (attempt + 1))
    raise WriteConflict(deployment_id, RETRIES)


async def _update_if_present(ctx: _Ctx, model: str, deployment_id: str, change: Transition) -> None:
    try:
        await _update(ctx, model, deployment_id, change)
    except NotFound:
        pass  # deleted meanwhile: nothing left to change


# -- reads ---------------------------------------------------------------------------------


async def _get(ctx: _Ctx, model: str, deployment_id: str) -> Record:
    found = await ctx.store.get(deployment_id)
    return res.of_model(found.record if found else None, model, deployment_id)


async def _model_state(ctx: _Ctx, model: str) -> tuple[list[Record], list[EnvRecord]]:
    """The model's deployments and environments; 404 when it has neither."""
    deps = [d for d in await ctx.store.list() if d.model == model]
    envs = [e for e in await ctx.store.list_environments() if e.model == model]
    if not deps and not envs:
        raise NotFound("model", model)
    return deps, envs


async def _view(ctx: _Ctx, rec: Record) -> dict:
    envs = await ctx.store.list_environments()
    return res.deployment_view(rec, envs, await _replicas(ctx), detail=True,
                               decisions=await _decisions(ctx), control=ctx.control(),
                               now=time.time())


async def _decisions(ctx: _Ctx) -> dict[str, deploy_pb2.AutoscalerDecision]:
    """The autoscaler's last decision per deployment (empty when none runs)."""
    try:
        if ctx.decisions_kv is None:
            ctx.decisions_kv = await bus.kv_bucket(ctx.nc, subjects.AUTOSCALER_BUCKET)
        items = await bus.kv_items(ctx.decisions_kv)
    except Exception as e:  # noqa: BLE001 - a view without the reason beats a failed view
        log.warning("autoscaler_decisions_unreadable", error=str(e))
        return {}
    out = {}
    for key, value in items.items():
        try:
            out[key] = deploy_pb2.AutoscalerDecision.FromString(value)
        except DecodeError:
            continue
    return out


async def _replicas(ctx: _Ctx) -> list[events_pb2.ReplicaRecord]:
    """Every replica record in `basalt_replicas` (expired ones are gone from the bucket)."""
    if ctx.replicas_kv is None:
        ctx.replicas_kv = await bus.replicas_bucket(ctx.nc)
    items = await bus.kv_items(ctx.replicas_kv)
    out = []
    for value in items.values():
        try:
            out.append(events_pb2.ReplicaRecord.FromString(value))
        except DecodeError:
            continue  # the reconciler logs unreadable records
    return out


# -- errors and auth -----------------------------------------------------------------------


# The HTTP status of each API error (the most specific class listed wins; others are 500).
HTTP_STATUS: dict[type[ApiError], int] = {
    InvalidRequest: 422, Unauthorized: 401, Forbidden: 403, NotFound: 404, RouteNotFound: 404,
    InvalidId: 404,
    MethodNotAllowed: 405, Conflict: 409, ScaleNotApplied: 503,
}


def http_status(e: ApiError) -> int:
    for cls in type(e).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def _json(e: ApiError, status: int | None = None) -> JSONResponse:
    return JSONResponse(e.body(), status_code=status or http_status(e))


def _install_errors(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(_: Request, e: ApiError) -> JSONResponse:
        return _json(e)

    @app.exception_handler(InvalidKeyError)
    async def _invalid_key(request: Request, e: InvalidKeyError) -> JSONResponse:
        # An id no KV entry can have, met at the store: nothing by that name exists.
        return _json(InvalidId(str(e.args[0]) if e.args else request.url.path))

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, e: RequestValidationError) -> JSONResponse:
        return _json(res.describe_errors(e.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, e: HTTPException) -> JSONResponse:
        if e.status_code == 405:
            return _json(MethodNotAllowed(f"{request.method} is not allowed on {request.url.path}"))
        if e.status_code == 404:
            return _json(RouteNotFound(f"no route {request.method} {request.url.path}"))
        return _json(ApiError(str(e.detail)), e.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        error_id = secrets.token_hex(6)
        log.exception("api_error", path=request.url.path, error_id=error_id, error=str(e))
        return _json(ApiError(f"internal error (error id {error_id}); the control plane's log "
                              "has the details"))


def _install_auth(app: FastAPI, verifier: KeyVerifier | None) -> None:
    @app.middleware("http")
    async def _auth(request: Request, call_next):  # type: ignore[no-untyped-def]
        if verifier is not None and request.url.path not in OPEN_PATHS:
            key = key_from_header(request.headers.get("authorization"))
            try:
                rec = await verifier.verify(key, MANAGEMENT)
            except KeyStoreUnavailable as e:
                return _json(ApiError(str(e)), 503)
            if rec is None:
                return _json(Unauthorized(
                    "missing, invalid or expired API key, or not a management key: send "
                    "'Authorization: Bearer <key>' or 'Api-Key <key>'"))
            if not key_allows_path(rec.models, request.url.path):
                return _json(Forbidden(f"API key {rec.key_id} is limited to models "
                                       f"{sorted(rec.models)}"))
        return await call_next(request)
