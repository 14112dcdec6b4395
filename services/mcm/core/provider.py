"""The provider interface the reconcile loop launches and stops replicas through, and the
runtime command line every provider builds from a launch request (no I/O here).

A provider turns `LaunchRequest`s into running `python -m services.runtime` replicas somewhere
(local processes, the simcloud SIMULATOR, later Kubernetes pods). It raises `ProviderError`
with the scope to block when it cannot: ZONE for capacity, REGION or CLOUD for outages.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from basalt.engine_settings import (
    ENGINE_SETTINGS_FLAG,
    PROVIDER_KEYS,
    decode_args,
    engine_settings_text,
    key_problem,
    runtime_flag,
    split,
)
from basalt.ids import ReplicaId
from services.mcm.core.errors import InvalidLaunchRequest
from services.mcm.core.inventory import Cluster, DeploymentId

# Flags the provider sets itself; an engine arg may not override them. Flags that decide
# where the replica listens, how it proves itself and what it may read are reserved too: a
# deployment may not open the runtime's port to the world or turn its credentials off. The
# list, and the engine settings basalt owns, live in basalt/engine_settings.py.
RESERVED_FLAGS = frozenset(k.replace("_", "-") for k in PROVIDER_KEYS)


@dataclass(slots=True, frozen=True)
class LaunchRequest:
    """One replica to start: what to run, for whom, and where."""

    replica_id: ReplicaId
    deployment_id: DeploymentId
    owner: str
    engine: str
    model_path: str
    model_name: str
    nats_url: str
    cluster: str
    cloud: str = ""
    region: str = ""
    zone: str = ""
    # The deployment's engine args: as DeploymentSpec stores them ({"max_model_len": "1024"},
    # text, decoded here) or as values ({"enforce_eager": True}); see runtime_args.
    engine_args: Mapping[str, Any] = field(default_factory=dict)
    # LoRA adapters to load at start: name -> path.
    loras: Mapping[str, str] = field(default_factory=dict)
    accelerator: str = ""
    accelerator_count: int = 0
    # The weights' folder in the node cache, for a python engine (whose model_path is its
    # model code); other engines get it as model_path.
    weights_dir: str = ""
    # The deployment's spec revision this replica runs (core/rollout.py).
    spec_revision: str = ""
    # Environment the replica starts with: its credential and NATS credentials file. Secret:
    # never in argv, never logged (repr hides it).
    env: Mapping[str, str] = field(default_factory=dict, repr=False)


@dataclass(slots=True, frozen=True)
class LaunchHandle:
    """A replica a provider started (or found again): enough to stop it and to show it."""

    replica_id: ReplicaId
    deployment_id: DeploymentId
    owner: str
    provider: str
    cluster: str
    cloud: str
    region: str
    zone: str
    # Wall-clock seconds when it was started.
    started_at: float
    # OS process id where the replica is a local process.
    pid: int | None = None
    # Where its stdout and stderr go, when the provider keeps them in a file.
    log_path: str | None = None
    accelerator: str = ""
    accelerator_count: int = 0
    # The deployment's spec revision it was started with ("": before revisions existed).
    spec_revision: str = ""


@runtime_checkable
class Provider(Protocol):
    """Starts and stops replicas on the clusters it offers."""

    name: str

    def clusters(self) -> list[Cluster]:
        """The clusters this provider offers, with their current up/down state."""
        ...

    async def launch(self, req: LaunchRequest) -> LaunchHandle:
        """Start one replica; returns once it is started (not ready). Launching an id that is
        already running returns its handle. Raises ProviderError when it cannot start."""
        ...

    async def stop(self, replica_id: ReplicaId) -> None:
        """Ask the replica to drain and exit (SIGTERM), kill it after a grace period, and
        return once it is gone. Stopping an unknown or exited replica does nothing."""
        ...

    async def list_owned(self, owner: str) -> list[LaunchHandle]:
        """Replicas started with this owner id that are still running, including ones a
        previous control-plane process started (where the provider can tell)."""
        ...

    async def close(self) -> None:
        """Stop every replica this provider started and release what it holds."""
        ...


def runtime_args(req: LaunchRequest) -> list[str]:
    """Arguments after `python -m services.runtime` that start the replica `req` describes.

    Engine args that are runtime settings become their flags (`--max-model-len 1024`); all
    the others, the engine's own settings, become one `--engine-settings-json` object."""
    args = [
        "--engine", req.engine, "--deployment", req.deployment_id,
        "--replica-id", req.replica_id, "--owner", req.owner, "--nats-url", req.nats_url,
        "--cluster", req.cluster,
    ]
    for flag, value in (("region", req.region), ("zone", req.zone), ("model", req.model_path),
                        ("model-name", req.model_name), ("weights-dir", req.weights_dir)):
        if value:
            args += [f"--{flag}", value]
    for name in sorted(req.loras):
        if not name or "=" in name:
            raise InvalidLaunchRequest("loras", name, "adapter names are non-empty without '='")
        args += ["--lora-modules", f"{name}={req.loras[name]}"]
    for key in sorted(req.engine_args):
        problem = engine_arg_problem(key)
        if problem:
            raise InvalidLaunchRequest("engine_args", key, problem)
    args_by_use = split(decode_args(req.engine_args))
    for key in sorted(args_by_use.runtime):
        args += runtime_flag(key, args_by_use.runtime[key])
    if args_by_use.engine:  # the engine's own settings, passed through as one JSON object
        args += [f"--{ENGINE_SETTINGS_FLAG}", engine_settings_text(args_by_use.engine)]
    return args


def engine_arg_problem(key: str) -> str | None:
    """Why `key` may not be an engine arg (None: it may): a malformed name, a flag the
    provider sets, or an engine setting basalt owns (basalt/engine_settings.py)."""
    return key_problem(key)
