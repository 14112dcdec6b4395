"""Typed settings: one pydantic class per service, read from flags and BASALT_<SERVICE>_* vars."""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

T = TypeVar("T", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set `env_prefix` to BASALT_<SERVICE>_."""

    model_config = SettingsConfigDict(
        cli_kebab_case=True, cli_implicit_flags=True, extra="forbid", cli_avoid_json=True
    )

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server to connect to.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus /metrics server.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the /metrics server (0 = any free port)."
    )


def parse(cls: type[T], args: list[str], prog: str) -> T:
    """Parse flags over environment over defaults; a bad value exits naming the flag."""
    cls.model_config["cli_prog_name"] = prog
    return CliApp.run(cls, cli_args=args)
