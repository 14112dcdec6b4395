"""Errors the deployments API answers with; each carries its data and its error body (no I/O).
The HTTP status of each is the adapter's business (api.py, `http_status`)."""

from __future__ import annotations

from collections.abc import Sequence


class ApiError(Exception):
    """Base class; `body()` is the JSON the client gets, shaped like the router's errors."""

    type = "server_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class InvalidRequest(ApiError):
    """A field is unknown, of the wrong type or out of range; `param` names the (first) field."""

    type = "invalid_request_error"
    code = "invalid_field"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class Unauthorized(ApiError):
    type = "authentication_error"
    code = "invalid_api_key"


class Forbidden(ApiError):
    """A valid management key that may not act here (it is limited to other models)."""

    type = "permission_error"
    code = "not_allowed"


def key_allows_path(models: Sequence[str], path: str) -> bool:
    """Whether a management key limited to `models` (empty: all) may use API path `path`:
    only the routes under one of its models."""
    if not models:
        return True
    return any(path == f"/v1/models/{m}" or path.startswith(f"/v1/models/{m}/")
               for m in models)


class InvalidId(ApiError):
    """An id in the path or body that no resource can have (not a valid key): nothing by
    that name exists."""

    type = "not_found_error"

    def __init__(self, key: str) -> None:
        super().__init__(f"{key[:80]!r} names nothing: ids are letters, digits and - / _ = .")


class NotFound(ApiError):
    type = "not_found_error"

    def __init__(self, kind: str, name: str, model: str | None = None) -> None:
        where = f" of model {model!r}" if model is not None and kind != "model" else ""
        super().__init__(f"no {kind} {name!r}{where}")
        self.kind = kind
        self.name = name
        self.model = model
        self.code = f"{kind}_not_found"


class RouteNotFound(ApiError):
    type = "not_found_error"
    code = "route_not_found"


class MethodNotAllowed(ApiError):
    type = "invalid_request_error"
    code = "method_not_allowed"


class Conflict(ApiError):
    """The request does not fit the current state; `code` says which rule it broke."""

    type = "conflict_error"
    code = "conflict"


class DeploymentExists(Conflict):
    code = "deployment_exists"

    def __init__(self, deployment_id: str) -> None:
        super().__init__(f"a deployment with id {deployment_id!r} exists already")
        self.deployment_id = deployment_id


class DevelopmentExists(Conflict):
    code = "development_deployment_exists"

    def __init__(self, model: str, existing_id: str) -> None:
        super().__init__(f"model {model!r} has a development deployment already "
                         f"({existing_id!r}); delete or promote it first")
        self.model = model
        self.existing_id = existing_id


class EnvironmentExists(Conflict):
    code = "environment_exists"

    def __init__(self, model: str, name: str) -> None:
        super().__init__(f"model {model!r} has an environment {name!r} already; "
                         f"promote a deployment into it instead")
        self.model = model
        self.name = name


class EnvironmentsPointAt(Conflict):
    """The deployment is what these environments serve; it cannot go."""

    code = "deployment_in_environment"

    def __init__(self, deployment_id: str, environments: Sequence[str]) -> None:
        self.deployment_id = deployment_id
        self.environments = sorted(environments)
        super().__init__(f"deployment {deployment_id!r} is served by environment(s) "
                         f"{self.environments}; promote another deployment into them first")


class DeploymentInactive(Conflict):
    code = "deployment_inactive"

    def __init__(self, deployment_id: str, action: str) -> None:
        super().__init__(f"deployment {deployment_id!r} is inactive; activate it before "
                         f"you {action} it")
        self.deployment_id = deployment_id
        self.action = action


class WriteConflict(Conflict):
    """Others kept changing the record; nothing of this request was written."""

    code = "write_conflict"

    def __init__(self, key: str, attempts: int) -> None:
        super().__init__(f"{key!r} was changed by others {attempts} times while this request "
                         f"tried to write it; nothing was changed, retry")
        self.key = key
        self.attempts = attempts


class ScaleNotApplied(ApiError):
    """A scale command went on the stream but no consumer applied it in time (mcm's scale
    consumer down or behind); it stays on the stream and is applied when one runs."""

    type = "service_unavailable"
    code = "scale_not_applied"

    def __init__(self, deployment_id: str, command_id: str, waited_s: float) -> None:
        super().__init__(f"scale command {command_id} for deployment {deployment_id!r} is queued "
                         f"but was not applied within {waited_s:g} s; it will be applied when "
                         "the control plane's scale consumer runs")
        self.deployment_id = deployment_id
        self.command_id = command_id
