"""Providers the control plane launches replicas through: local processes and the simcloud
SIMULATOR (the package does I/O; `simworld`, the simulated world, does not). The interface they
implement is `services.mcm.core.provider.Provider`."""

from services.mcm.core.provider import LaunchHandle, LaunchRequest, Provider, runtime_args

from .local import LOCAL_CLUSTER, LocalProvider
from .simcloud import SimCloudProvider, load_config
from .simworld import SimCloudConfig, SimWorld, parse_config

__all__ = [
    "LOCAL_CLUSTER", "LaunchHandle", "LaunchRequest", "LocalProvider", "Provider",
    "SimCloudConfig", "SimCloudProvider", "SimWorld", "load_config", "parse_config",
    "runtime_args",
]
