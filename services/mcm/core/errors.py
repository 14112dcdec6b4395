"""Errors the control plane raises; each carries the data a caller needs (no I/O)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from services.mcm.core.inventory import Scope

if TYPE_CHECKING:
    from services.mcm.core.placement import Rejection, Requirement


class McmError(Exception):
    """Base class for control-plane errors."""


class ProviderError(McmError):
    """A provider could not launch (or reach) something; `scope` says how much of the world
    to block: a zone out of capacity is ZONE, a region outage REGION, a cloud outage CLOUD."""

    def __init__(self, scope: Scope, message: str, cluster: str | None = None) -> None:
        self.scope = scope
        self.message = message
        self.cluster = cluster
        where = f" ({cluster})" if cluster else ""
        super().__init__(f"{scope.value} failure{where}: {message}")


class UnknownCluster(ProviderError):
    """A launch named a cluster this provider does not have."""

    def __init__(self, cluster: str, known: Iterable[str]) -> None:
        self.known = sorted(known)
        super().__init__(Scope.CLUSTER, f"no such cluster (known: {self.known})", cluster)


class PlacementError(McmError):
    """No cluster fits a replica; `rejections` says which rule excluded which cluster."""

    def __init__(self, requirement: Requirement, rejections: Sequence[Rejection]) -> None:
        self.requirement = requirement
        self.rejections = list(rejections)
        super().__init__(_placement_message(requirement, self.rejections))


def _placement_message(requirement: Requirement, rejections: list[Rejection]) -> str:
    what = requirement.describe()
    if not rejections:
        return f"no cluster fits {what}: no clusters are known"
    by_rule: dict[str, list[str]] = {}
    for r in rejections:
        by_rule.setdefault(r.rule.value, []).append(
            f"{r.cluster} ({r.detail})" if r.detail else r.cluster)
    parts = [f"{rule}: {', '.join(names)}" for rule, names in by_rule.items()]
    return f"no cluster fits {what}: " + "; ".join(parts)


class InvalidLaunchRequest(McmError, ValueError):
    """A launch request field the runtime cannot take; names the field, value and rule."""

    def __init__(self, field_name: str, value: object, rule: str) -> None:
        self.field_name = field_name
        self.value = value
        self.rule = rule
        super().__init__(f"launch request {field_name}={value!r}: {rule}")


class SimCloudConfigError(McmError, ValueError):
    """The simcloud SIMULATOR's config is wrong at `where` (a dotted path in the file)."""

    def __init__(self, where: str, problem: str) -> None:
        self.where = where
        self.problem = problem
        super().__init__(f"simcloud config at {where or '<top>'}: {problem}")


class UnknownSimTarget(McmError, KeyError):
    """A fault was aimed at a cloud, region or zone the simcloud SIMULATOR does not have."""

    def __init__(self, kind: str, name: str, known: Iterable[str]) -> None:
        self.kind = kind
        self.name = name
        self.known = sorted(known)
        super().__init__(f"simcloud has no {kind} {name!r} (known: {self.known})")

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0])


class ReplicaExited(McmError):
    """A replica process ended before it became ready; carries its exit code and log tail."""

    def __init__(self, replica_id: str, returncode: int | None, log_tail: str) -> None:
        self.replica_id = replica_id
        self.returncode = returncode
        self.log_tail = log_tail
        super().__init__(f"replica {replica_id} exited with code {returncode} before it was "
                         f"ready; log tail:\n{log_tail}")
