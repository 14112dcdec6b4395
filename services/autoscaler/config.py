"""The autoscaler's settings: flags and BASALT_AUTOSCALER_* environment variables (no I/O)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from basalt.config import ServiceSettings


class AutoscalerSettings(ServiceSettings):
    """Decides each deployment's replica count every tick and sends scale commands."""

    model_config = SettingsConfigDict(
        env_prefix="BASALT_AUTOSCALER_", cli_kebab_case=True, cli_implicit_flags=True,
        extra="forbid", cli_avoid_json=True,
    )

    tick: float = Field(1.0, gt=0, le=60, description="Seconds between decisions.")
    lease_ttl: float = Field(3.0, gt=0, le=120, description="Seconds the leader's lease lasts unless renewed; a standby takes over after it.")
    holder_id: str = Field("", description="This process's name in the lease (default: autoscaler-<random>).")
    replica_secret_file: str = Field("", description="The platform secret: replica records and load reports not signed by their replica are ignored. Empty: trusted as they come (loopback tests only).")
    ready_file: str = Field("", description="Write the metrics port and holder id as JSON to this file once running (for scripts).")
