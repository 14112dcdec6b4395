"""The HTTP status and gRPC code of each router error, for the two front doors (no I/O)."""

from __future__ import annotations

import grpc

from services.router.core.errors import (
    AuthUnavailable,
    BadRequest,
    Forbidden,
    ModelNotFound,
    NoReplica,
    QueueFull,
    RateLimited,
    ReplicaFailed,
    RouterError,
    Unauthorized,
)

# Looked up by the error's class, most specific first (its MRO); anything else is 500 / INTERNAL.
_CODES: dict[type[RouterError], tuple[int, grpc.StatusCode]] = {
    BadRequest: (400, grpc.StatusCode.INVALID_ARGUMENT),
    Unauthorized: (401, grpc.StatusCode.UNAUTHENTICATED),
    Forbidden: (403, grpc.StatusCode.PERMISSION_DENIED),
    ModelNotFound: (404, grpc.StatusCode.NOT_FOUND),
    RateLimited: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    AuthUnavailable: (503, grpc.StatusCode.UNAVAILABLE),
    QueueFull: (429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    ReplicaFailed: (502, grpc.StatusCode.UNAVAILABLE),
    NoReplica: (503, grpc.StatusCode.UNAVAILABLE),
}
_DEFAULT = (500, grpc.StatusCode.INTERNAL)


def _codes(e: RouterError) -> tuple[int, grpc.StatusCode]:
    for cls in type(e).__mro__:
        if cls in _CODES:
            return _CODES[cls]
    return _DEFAULT


def http_status(e: RouterError) -> int:
    return _codes(e)[0]


def grpc_code(e: RouterError) -> grpc.StatusCode:
    return _codes(e)[1]
