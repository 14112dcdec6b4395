"""structlog JSON logging with a request id carried in context (no I/O beyond stderr)."""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog
from structlog.typing import EventDict, WrappedLogger

_SECRET_KEYS = re.compile(r"(authorization|api[_-]?key|token|secret|password)", re.IGNORECASE)


def _redact(_: WrappedLogger, __: str, event: EventDict) -> EventDict:
    for key in list(event):
        if _SECRET_KEYS.search(key) and key not in ("token_ids", "tokens", "max_tokens"):
            event[key] = "[redacted]"
    return event


def configure(service: str, level: str = "info", json: bool = True) -> None:
    """Configure structlog once per process; every line carries `service`."""
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format="%(message)s")
    renderer: Any = (
        structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _redact,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(file=sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)


def bind_request_id(request_id: str) -> None:
    structlog.contextvars.bind_contextvars(request_id=request_id)


def clear_request_id() -> None:
    structlog.contextvars.unbind_contextvars("request_id")
