"""What the SDK raises: the server's refusal with its error body's fields, or nothing answering
(no I/O)."""

from __future__ import annotations


class BasaltError(Exception):
    """The server refused a request: its HTTP status and its error body's fields (`param`
    names the field at fault, e.g. `replicas` or `engine_args.max_model_len`)."""

    def __init__(self, status: int, message: str, param: str | None = None,
                 type: str | None = None, code: str | None = None) -> None:
        super().__init__(f"{status} {message}" if status else message)
        self.status, self.message, self.param, self.type, self.code = (
            status, message, param, type, code)


class Unreachable(BasaltError):
    """Nothing answers at the URL (refused, no route, timed out before a reply): status 0."""

    def __init__(self, url: str, detail: str) -> None:
        super().__init__(0, f"no control plane at {url} (is `basalt up` running? `make up` "
                            "starts it)", type="connection_error")
        self.url, self.detail = url, detail
