"""What each router error is answered with on the HTTP and the gRPC door."""

from __future__ import annotations

import grpc
import pytest

from services.router.core import errors
from services.router.status_codes import grpc_code, http_status


@pytest.mark.parametrize(("error", "status", "code"), [
    (errors.BadRequest("x"), 400, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.Unauthorized("x"), 401, grpc.StatusCode.UNAUTHENTICATED),
    (errors.ModelNotFound("m"), 404, grpc.StatusCode.NOT_FOUND),
    (errors.QueueFull("d", 4), 429, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.ReplicaFailed("x"), 502, grpc.StatusCode.UNAVAILABLE),
    (errors.NoReplica("d", 1.0, "none ready"), 503, grpc.StatusCode.UNAVAILABLE),
    (errors.AuthUnavailable("key store down"), 503, grpc.StatusCode.UNAVAILABLE),
    (errors.RouterError("x"), 500, grpc.StatusCode.INTERNAL),
])
def test_each_error_has_its_status_and_code(error: errors.RouterError, status: int,
                                            code: grpc.StatusCode) -> None:
    assert http_status(error) == status
    assert grpc_code(error) == code
    assert error.body()["error"]["message"]
