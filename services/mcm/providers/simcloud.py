"""SimCloudProvider: a SIMULATOR of several clouds whose replicas are real local runtime
processes tagged with their simulated cloud, region and zone (does I/O).

Nothing here talks to a cloud. The simulated world (inventory, prices, outages, capacity
errors) is `simworld.SimWorld`; this adapter sleeps the simulated launch delay, starts the
replica through a `LocalProvider`, and kills the replicas of a cloud, region or zone that an
injected outage takes down. Fault injection (`inject_capacity_error`, `fail_cloud`,
`fail_region`, `fail_zone`, `restore`) is plain method calls, for tests and operators.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import yaml

from basalt.ids import ReplicaId
from basalt.log import get_logger
from services.mcm.core.errors import SimCloudConfigError
from services.mcm.core.inventory import Cluster, LatencyTable, Scope, units_for
from services.mcm.core.provider import LaunchHandle, LaunchRequest

from .local import LocalProvider
from .simworld import SimCloudConfig, SimWorld, parse_config

log = get_logger(__name__)

DEFAULT_CONFIG = Path(__file__).resolve().parents[3] / "deploy" / "simcloud" / "default.yaml"


def load_config(path: Path = DEFAULT_CONFIG) -> SimCloudConfig:
    """Read and check a simcloud SIMULATOR config file (YAML)."""
    try:
        data: Any = yaml.safe_load(Path(path).read_text())
    except (OSError, yaml.YAMLError) as e:
        raise SimCloudConfigError(str(path), f"cannot read: {e}") from e
    return parse_config(data)


class SimCloudProvider:
    """Provider over simulated clouds (a SIMULATOR); replicas run as local processes."""

    name = "simcloud"

    def __init__(self, config: SimCloudConfig, state_dir: Path, *, grace_s: float = 40.0,
                 extra_args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.world = SimWorld(config)
        self.local = LocalProvider(state_dir, clusters=[p.cluster for p in config.pools],
                                   grace_s=grace_s, extra_args=extra_args, env=env)
        self._sleep = sleep

    @classmethod
    def from_file(cls, path: Path, state_dir: Path, **kw: Any) -> SimCloudProvider:
        return cls(load_config(path), state_dir, **kw)

    def clusters(self) -> list[Cluster]:
        return self.world.clusters()

    def latency(self) -> LatencyTable:
        """The simulated latency between regions, from the config."""
        return self.world.config.latency

    async def launch(self, req: LaunchRequest) -> LaunchHandle:
        """Admit the launch in the simulated world (raising ProviderError as a cloud would),
        wait the simulated launch delay, then start the replica as a local process."""
        cluster = self.world.admit(req.replica_id, req.cluster, units_for(req.accelerator_count))
        try:
            delay = self.world.launch_delay_s(cluster.name)
            if delay > 0:
                await self._sleep(delay)
                self.world.check_up(cluster.name)  # an outage during the delay fails it
            placed = replace(req, cloud=cluster.cloud, region=cluster.region, zone=cluster.zone,
                             accelerator=cluster.accelerator)
            handle = await self.local.launch(placed)
        except BaseException:
            self.world.release(req.replica_id)
            raise
        return replace(handle, provider=self.name)

    async def stop(self, replica_id: ReplicaId) -> None:
        try:
            await self.local.stop(replica_id)
        finally:
            self.world.release(replica_id)

    async def list_owned(self, owner: str) -> list[LaunchHandle]:
        handles = await self.local.list_owned(owner)
        for h in handles:
            self.world.track(h.replica_id, h.cluster, units_for(h.accelerator_count))
        return [replace(h, provider=self.name) for h in handles]

    async def close(self) -> None:
        started = self.local.running()
        await self.local.close()
        for rid in started:
            self.world.release(rid)

    # -- fault injection (SIMULATOR only) ---------------------------------------------------

    def inject_capacity_error(self, zone: str, count: int | None = None) -> None:
        """The next `count` launches in `zone` fail with a ZONE capacity error (None: all,
        until `restore`)."""
        self.world.inject_capacity_error(zone, count)
        log.warning("simcloud_capacity_error_injected", zone=zone, count=count)

    def _outage(self, scope: Scope, name: str) -> list[ReplicaId]:
        victims = self.world.fail(scope, name)
        killed = [rid for rid in victims if self.local.kill(rid)]
        for rid in victims:
            self.world.release(rid)
        log.warning("simcloud_outage", scope=scope.value, name=name, killed=killed)
        return killed

    def fail_cloud(self, cloud: str) -> list[ReplicaId]:
        """Simulated outage of a whole cloud: its replicas are killed (no drain, as a lost
        host would be) and launches there raise ProviderError(CLOUD). Returns the killed."""
        return self._outage(Scope.CLOUD, cloud)

    def fail_region(self, region: str) -> list[ReplicaId]:
        """Simulated outage of one region (ProviderError(REGION)); returns the killed."""
        return self._outage(Scope.REGION, region)

    def fail_zone(self, zone: str) -> list[ReplicaId]:
        """Simulated outage of one zone (ProviderError(ZONE)); returns the killed."""
        return self._outage(Scope.ZONE, zone)

    def restore(self, name: str | None = None) -> None:
        """End the outages and capacity errors of a cloud, region or zone (None: all)."""
        self.world.restore(name)
        log.info("simcloud_restored", name=name or "all")
