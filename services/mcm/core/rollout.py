"""What changed between two versions of a deployment, and which changes need new replicas
(pure, no I/O).

A deployment's replicas run one version of the fields that shape the process: engine, model,
engine settings, accelerator, LoRA adapters, weights. Those fields hash to the deployment's
`spec_revision`; each replica is launched with the revision it runs. A change to any of them
makes a new revision, and the reconciler replaces the old replicas one at a time (a new one
READY before an old one stops; the old one drains its requests: core/reconcile.py). Every
other field takes effect without new replicas: routing, queue and backpressure settings are
read by the router from the record it watches, autoscaling by the autoscaler, the replica count
by the reconciler, the regions by the next placement.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from google.protobuf.json_format import MessageToDict

from basalt.engine_settings import decode_args
from basalt.pb import deploy_pb2

# DeploymentSpec fields a running replica was started with: changing one needs new replicas.
REPLICA_FIELDS = ("engine", "model_path", "engine_args", "accelerator", "accelerator_count",
                  "loras", "weights")


@dataclass(slots=True, frozen=True)
class Change:
    field: str
    old: Any
    new: Any

    @property
    def needs_new_replicas(self) -> bool:
        return self.field.split(".", 1)[0] in REPLICA_FIELDS

    def as_dict(self) -> dict[str, Any]:
        return {"field": self.field, "old": self.old, "new": self.new,
                "needs_new_replicas": self.needs_new_replicas}


def spec_dict(spec: deploy_pb2.DeploymentSpec) -> dict[str, Any]:
    """The spec as the API shows it: every field, engine args as their typed values."""
    out = MessageToDict(spec, preserving_proto_field_name=True,
                        always_print_fields_with_no_presence=True)
    out["engine_args"] = decode_args(spec.engine_args)
    return out


def spec_revision(spec: deploy_pb2.DeploymentSpec) -> str:
    """A short hash of the fields a replica is started with (stable across processes)."""
    view = spec_dict(spec)
    shaped = {k: view.get(k) for k in REPLICA_FIELDS}
    blob = json.dumps(shaped, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def _flat(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted keys (lists stay values): a changed engine arg is named alone."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def changes(old: deploy_pb2.DeploymentRecord, new: deploy_pb2.DeploymentRecord
            ) -> list[Change]:
    """Every field that differs between two records of one deployment, by dotted name:
    spec fields (`routing_policy`, `engine_args.max_model_len`, `autoscaling.max_replica`),
    then `status`, `kind` and `desired_replicas`."""
    a, b = _flat(spec_dict(old.spec)), _flat(spec_dict(new.spec))
    out = [Change(k, a.get(k), b.get(k)) for k in sorted(a.keys() | b.keys())
           if a.get(k) != b.get(k)]
    if old.status != new.status:
        out.append(Change("active", old.status == deploy_pb2.DEPLOYMENT_STATUS_ACTIVE,
                          new.status == deploy_pb2.DEPLOYMENT_STATUS_ACTIVE))
    if old.kind != new.kind:
        out.append(Change("kind", old.kind, new.kind))
    if old.desired_replicas != new.desired_replicas:
        out.append(Change("replicas", old.desired_replicas, new.desired_replicas))
    return out


def needs_rollout(found: list[Change]) -> bool:
    return any(c.needs_new_replicas for c in found)
