"""The coldstart service's settings: flags and BASALT_COLDSTART_* variables (no I/O)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from basalt.config import ServiceSettings


class ColdstartSettings(ServiceSettings):
    """One node's weight cache: fetches revisions before replicas start, keeps hot ones in
    memory, and publishes what it holds."""

    model_config = SettingsConfigDict(
        env_prefix="BASALT_COLDSTART_", cli_kebab_case=True, cli_implicit_flags=True,
        extra="forbid", cli_avoid_json=True,
    )

    node: str = Field("local", pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$", description="This node's name: the cluster name the control plane places replicas on (local for `basalt up`).")
    cache_dir: str = Field(".basalt/coldstart", description="Where the cache lives (blobs, revisions, manifests, partial downloads).")
    budget_gb: float = Field(100.0, gt=0, description="Most GB the cache may hold; least recently used revisions not in use are evicted to fit.")
    warm_gb: float = Field(4.0, ge=0, description="Most GB of revisions kept in memory (the page cache): the warm tier. 0 turns it off.")
    warm_interval: float = Field(30.0, gt=0, description="Seconds between warm-tier passes (re-reading what the kernel dropped).")
    secrets_dir: str = Field("", description="Folder of secret files (one per name, 0600): a source's token_secret names one. The Hub also reads HF_TOKEN.")
    heartbeat: float = Field(5.0, gt=0, description="Seconds between rewrites of this node's record in bucket basalt_weights.")
    max_parallel: int = Field(2, ge=1, le=16, description="Revisions fetched at once.")
    pin_s: float = Field(900.0, gt=0, description="Seconds a revision fetched for a replica stays in use before that replica's record appears.")
    replica_secret_file: str = Field("", description="The platform secret: replica records not signed by their replica are ignored when deciding what is in use.")
    ready_file: str = Field("", description="Write the metrics port as JSON to this file once running (for scripts).")
