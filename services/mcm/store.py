"""The control plane's state in NATS JetStream KV, with compare-and-set writes (does I/O).

Deployments live in `basalt_deployments` (key = deployment id), environments in
`basalt_environments` (key = "<model>.<environment>"). Every write of a deployment is a
compare-and-set on the KV revision it was read at, so two writers never lose each other's
change: the loser gets `RevisionMismatch` and re-reads. The router watches the same buckets.
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError
from nats.aio.client import Client
from nats.js.errors import KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from basalt import bus, subjects
from basalt.log import get_logger
from basalt.pb import deploy_pb2

log = get_logger(__name__)


class StoreError(Exception):
    pass


class RevisionMismatch(StoreError):
    """The record changed since it was read (or exists when it should not)."""

    def __init__(self, key: str) -> None:
        super().__init__(f"{key!r} was changed by someone else; read it again and retry")
        self.key = key


@dataclass(slots=True)
class Versioned:
    record: deploy_pb2.DeploymentRecord
    revision: int


def env_key(model: str, name: str) -> str:
    return f"{model}.{name}"


class Store:
    def __init__(self, deployments: KeyValue, environments: KeyValue) -> None:
        self.deployments = deployments
        self.environments = environments

    @classmethod
    async def open(cls, nc: Client) -> Store:
        return cls(
            await bus.kv_bucket(nc, subjects.DEPLOYMENTS_BUCKET),
            await bus.kv_bucket(nc, subjects.ENVIRONMENTS_BUCKET),
        )

    # -- deployments -------------------------------------------------------------------

    async def get(self, deployment_id: str) -> Versioned | None:
        try:
            entry = await self.deployments.get(deployment_id)
        except NotFoundError:  # missing or deleted
            return None
        if not entry.value:
            return None
        return Versioned(deploy_pb2.DeploymentRecord.FromString(entry.value), entry.revision or 0)

    async def list(self) -> list[deploy_pb2.DeploymentRecord]:
        items = await bus.kv_items(self.deployments)
        out = _decoded(deploy_pb2.DeploymentRecord, items, self.deployments)
        return sorted(out, key=lambda r: (r.model, r.created_ts, r.id))

    async def create(self, record: deploy_pb2.DeploymentRecord) -> int:
        """Write a new deployment; RevisionMismatch when the id is taken."""
        try:
            return await self.deployments.create(record.id, record.SerializeToString())
        except KeyWrongLastSequenceError:
            raise RevisionMismatch(record.id) from None
        except Exception as e:  # nats-py raises a generic APIError for "key exists"
            if "wrong last sequence" in str(e).lower() or "exists" in str(e).lower():
                raise RevisionMismatch(record.id) from None
            raise

    async def update(self, record: deploy_pb2.DeploymentRecord, revision: int) -> int:
        """Compare-and-set: RevisionMismatch when the stored revision is no longer `revision`."""
        record.generation += 1
        try:
            return await self.deployments.update(record.id, record.SerializeToString(), last=revision)
        except KeyWrongLastSequenceError:
            raise RevisionMismatch(record.id) from None
        except Exception as e:
            if "wrong last sequence" in str(e).lower():
                raise RevisionMismatch(record.id) from None
            raise

    async def delete(self, deployment_id: str) -> None:
        await self.deployments.delete(deployment_id)

    # -- environments -------------------------------------------------------------------

    async def get_environment(self, model: str, name: str) -> deploy_pb2.EnvironmentRecord | None:
        try:
            entry = await self.environments.get(env_key(model, name))
        except NotFoundError:  # missing or deleted
            return None
        return deploy_pb2.EnvironmentRecord.FromString(entry.value) if entry.value else None

    async def list_environments(self) -> builtins.list[deploy_pb2.EnvironmentRecord]:
        items = await bus.kv_items(self.environments)
        out = _decoded(deploy_pb2.EnvironmentRecord, items, self.environments)
        return sorted(out, key=lambda r: (r.model, r.name))

    async def put_environment(self, rec: deploy_pb2.EnvironmentRecord) -> None:
        await self.environments.put(env_key(rec.model, rec.name), rec.SerializeToString())

    async def delete_environment(self, model: str, name: str) -> None:
        await self.environments.delete(env_key(model, name))


def _decoded(cls: Any, items: dict[str, bytes], bucket: KeyValue) -> list[Any]:
    """The records that decode; an unreadable one is logged and left out (one bad record
    must not stop every listing and reconcile tick)."""
    out = []
    for key, value in items.items():
        try:
            out.append(cls.FromString(value))
        except DecodeError:
            log.warning("unreadable_record", bucket=bucket._name, key=key[:80])
    return out
