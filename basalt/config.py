"""Typed settings: one pydantic class per service, read from flags and BASALT_<SERVICE>_* vars."""

from __future__ import annotations

from typing import TypeVar

from pydantic import Field
from pydantic_settings import BaseSettings, CliApp, SettingsConfigDict

from basalt.bus import NatsAuth

T = TypeVar("T", bound="ServiceSettings")


class ServiceSettings(BaseSettings):
    """Settings every service has. Subclasses set `env_prefix` to BASALT_<SERVICE>_."""

    model_config = SettingsConfigDict(
        cli_kebab_case=True, cli_implicit_flags=True, extra="forbid", cli_avoid_json=True
    )

    nats_url: str = Field("nats://127.0.0.1:4222", description="NATS server to connect to.")
    nats_creds: str = Field("", description="This service's NATS nkey seed file (0600; `basalt up` writes one per service).")
    nats_tls_ca: str = Field("", description="CA file that signed the NATS server's certificate (turns TLS on).")
    nats_tls_cert: str = Field("", description="Client certificate for NATS mTLS.")
    nats_tls_key: str = Field("", description="Client key for NATS mTLS.")
    nats_insecure: bool = Field(False, description="Allow NATS off loopback without credentials or TLS.")
    log_level: str = Field("info", description="Log level: debug, info, warning, error.")
    metrics_host: str = Field("127.0.0.1", description="Address of the Prometheus /metrics server.")
    metrics_port: int = Field(
        0, ge=0, le=65535, description="Port of the /metrics server (0 = any free port)."
    )

    def nats_auth(self) -> NatsAuth:
        return NatsAuth(self.nats_creds, self.nats_tls_ca, self.nats_tls_cert,
                        self.nats_tls_key, self.nats_insecure)


def parse(cls: type[T], args: list[str], prog: str) -> T:
    """Parse flags over environment over defaults; a bad value exits naming the flag."""
    cls.model_config["cli_prog_name"] = prog
    return CliApp.run(cls, cli_args=args)
