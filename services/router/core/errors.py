"""Errors the router answers with, each carrying its data and its OpenAI error type and code;
and the pure core's configuration errors, each carrying the value it refused (no I/O). Their
HTTP statuses and gRPC codes are the adapters' business (services/router/status_codes.py)."""

from __future__ import annotations


class RouterError(Exception):
    type = "server_error"
    code: str | None = None

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        # The request field at fault, where one is (OpenAI's `param`).
        self.param = param

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


class BadRequest(RouterError):
    type = "invalid_request_error"


class Unauthorized(RouterError):
    type = "authentication_error"
    code = "invalid_api_key"


class AuthUnavailable(RouterError):
    """The key store cannot be read and the key was not verified recently: retry, not 401."""

    type = "service_unavailable"
    code = "auth_unavailable"


class Forbidden(RouterError):
    """A valid key that may not use this model."""

    type = "permission_error"
    code = "model_not_allowed"

    def __init__(self, model: str) -> None:
        super().__init__(f"this API key may not use model {model!r}")
        self.model = model


class RateLimited(RouterError):
    """A key over its request rate or concurrency limit; retry after `retry_after_s`."""

    type = "rate_limit_error"
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class ModelNotFound(RouterError):
    type = "invalid_request_error"
    code = "model_not_found"

    def __init__(self, model: str, param: str | None = None) -> None:
        super().__init__(f"The model `{model}` does not exist or is not active.", param)
        self.model = model


class QueueFull(RouterError):
    type = "rate_limit_error"
    code = "queue_full"

    def __init__(self, deployment_id: str, limit: int) -> None:
        super().__init__(
            f"deployment {deployment_id!r} has {limit} requests waiting already (its queue "
            f"limit); retry later"
        )
        self.deployment_id = deployment_id
        self.limit = limit
        # Retry-After: a queue that is full drains in about a request's time.
        self.retry_after_s = 1.0


class Rejected(QueueFull):
    """No replica can take the request now and the deployment's backpressure policy is
    `reject_on_full`: 429 at once (a wake went out when it has no replica at all)."""

    code = "backpressure_reject"

    def __init__(self, deployment_id: str, scaled_to_zero: bool) -> None:
        RouterError.__init__(self, (
            f"deployment {deployment_id!r} has no ready replica (scaled to zero; waking it)"
            if scaled_to_zero else f"every replica of deployment {deployment_id!r} is busy")
            + " and its request_backpressure_policy is reject_on_full; retry later")
        self.deployment_id = deployment_id
        self.limit = 0
        self.retry_after_s = 1.0


class ParkedFull(QueueFull):
    """Too many requests already wait for a deployment with no ready replica."""

    code = "parked_full"

    def __init__(self, deployment_id: str, limit: int) -> None:
        RouterError.__init__(self, (
            f"deployment {deployment_id!r} is waking from zero and has {limit} requests "
            f"parked already (its parked_limit); retry later"))
        self.deployment_id = deployment_id
        self.limit = limit


class NoReplica(RouterError):
    type = "service_unavailable"
    code = "no_replica"

    def __init__(self, deployment_id: str, waited_s: float, why: str) -> None:
        super().__init__(
            f"no replica of deployment {deployment_id!r} could take the request within "
            f"{waited_s:.1f}s ({why})"
        )
        self.deployment_id = deployment_id


class ReplicaFailed(RouterError):
    """A replica failed after streaming had begun; the stream ends with this error."""

    type = "replica_error"
    code = "replica_failed"


# ---- the pure core's configuration errors (raised at start, never answered with) ---------


class InvalidBlockSize(ValueError):
    """A block size that is not a positive integer."""

    def __init__(self, block_size: int) -> None:
        super().__init__(f"block_size must be a positive integer, got {block_size!r}")
        self.block_size = block_size


class InvalidPolicyConfig(ValueError):
    """A policy setting out of its range; names the field, the value and the rule."""

    def __init__(self, field_name: str, value: object, rule: str) -> None:
        super().__init__(f"policy config {field_name}={value!r}: {rule}")
        self.field_name = field_name
        self.value = value
        self.rule = rule
