"""The control plane's settings: flags and BASALT_MCM_* environment variables (no I/O)."""

from __future__ import annotations

import enum

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from basalt.config import ServiceSettings

from .providers.simcloud import DEFAULT_CONFIG


class ProviderKind(str, enum.Enum):
    LOCAL = "local"
    SIMCLOUD = "simcloud"


class McmSettings(ServiceSettings):
    """Deployments API, placement and the reconcile loop that starts and stops replicas."""

    model_config = SettingsConfigDict(
        env_prefix="BASALT_MCM_", cli_kebab_case=True, cli_implicit_flags=True,
        extra="forbid", cli_avoid_json=True,
    )

    http_host: str = Field("127.0.0.1", description="Address of the deployments HTTP API.")
    http_port: int = Field(8081, ge=0, le=65535, description="Port of the deployments API (0 = any free port).")
    provider: ProviderKind = Field(ProviderKind.LOCAL, description="Where replicas run: local (processes on this host) or simcloud (a SIMULATOR of several clouds).")
    simcloud_config: str = Field(str(DEFAULT_CONFIG), description="simcloud SIMULATOR config (YAML) when --provider simcloud.")
    state_dir: str = Field(".basalt/mcm", description="Folder for the owner id and the replicas' logs and handles; a restart on the same folder adopts its replicas.")
    owner: str = Field("", description="Owner id written into every replica this control plane starts (default: kept in <state-dir>/owner).")
    reconcile_period: float = Field(1.0, gt=0, le=60, description="Seconds between reconcile ticks.")
    block_ttl: float = Field(60.0, gt=0, description="Seconds a cloud, region or zone stays blocked after a provider failure there.")
    launch_timeout: float = Field(600.0, gt=0, description="A launched replica that has not registered by then is stopped and replaced.")
    stale_after: float = Field(6.0, gt=0, description="A replica of ours that the provider does not list counts as gone once its heartbeat is this old.")
    backoff_base: float = Field(2.0, gt=0, le=600, description="After a replica fails to start, its deployment's next launch waits this long, doubling with each failure in a row (up to 60 s).")
    max_start_failures: int = Field(5, ge=1, le=1000, description="Start failures in a row after which a deployment is FAILED: no more launches until it is deployed again or activated.")
    replica_grace: float = Field(40.0, gt=0, description="Seconds a stopping replica may drain before it is killed.")
    auth: bool = Field(False, description="Require an API key (`basalt keys create`) on the deployments API.")
    stop_replicas_on_exit: bool = Field(False, description="On SIGTERM/SIGINT stop every replica this owner runs (default: leave them for the next start to adopt).")
    replica_secret_file: str = Field("", description="The platform secret (0600 file) each replica's gRPC credential is derived from; the router has the same file. Empty: replicas answer anyone (loopback tests only).")
    runtime_nats_creds: str = Field("", description="NATS nkey seed file the replicas this control plane starts connect with (the runtime role's).")
    model_roots: list[str] = Field(default_factory=list, description="Folders a deployment's model and LoRA paths must lie under, repeatable (a deployment starts code from its model path). Empty: any path, with a warning.")
    ready_file: str = Field("", description="Write the bound ports and owner id as JSON to this file once serving (for scripts).")
