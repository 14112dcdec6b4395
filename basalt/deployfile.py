"""Deployment files (YAML) → DeploymentRecord / EnvironmentRecord protos, validated (no I/O).

The same format serves the router's `--deployments` file (before the control plane exists)
and `basalt deploy FILE`. Example: deploy/local/tiny.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, JsonValue, field_validator

from basalt.engine_settings import encode_args, normal_key
from basalt.pb import deploy_pb2
from basalt.weights import normal_uri, uri_problem

ROUTING_POLICIES = ("kv", "round_robin", "least_loaded", "random", "session")


DEFAULT_QUEUE_LIMIT = 1024


class Autoscaling(BaseModel):
    model_config = ConfigDict(extra="forbid")
    min_replica: int = Field(0, ge=0, le=1000)
    max_replica: int = Field(1, ge=0, le=1000)
    autoscaling_window: int = Field(60, ge=10, le=3600)
    scale_down_delay: int = Field(900, ge=0, le=3600)
    concurrency_target: int = Field(1, ge=1, le=1_000_000)
    target_utilization_percentage: int = Field(70, ge=1, le=100)
    # basalt's additions (services/autoscaler/core/settings.py says what each does).
    target_in_flight_tokens: int = Field(0, ge=0, le=100_000_000)
    scaling_mode: Literal["concurrency", "sla"] = "concurrency"
    panic_window: int = Field(6, ge=0, le=600)
    panic_threshold_percentage: int = Field(200, ge=110, le=1000)
    ttft_p90_target_ms: float = Field(0.0, ge=0, le=600_000)
    itl_p90_target_ms: float = Field(0.0, ge=0, le=60_000)
    cold_start_lead: bool = True
    scale_down_step: int = Field(1, ge=1, le=1000)

    def to_proto(self) -> deploy_pb2.AutoscalingSettings:
        return deploy_pb2.AutoscalingSettings(**self.model_dump())


class Weights(BaseModel):
    """Where a deployment's weights come from; the node's coldstart service fetches them
    into its cache before a replica starts (Truss's `model_cache` / `weights` idea)."""

    model_config = ConfigDict(extra="forbid")
    # A folder, http(s)://<base> (serving basalt-manifest.json), hf://<repo_id>, s3://, gs://.
    uri: str = Field(min_length=1, max_length=2048)
    revision: str = Field("", max_length=256)
    token_secret: str = Field("", max_length=128, pattern=r"^$|^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    allow_patterns: list[str] = Field(default_factory=list, max_length=64)

    @field_validator("uri")
    @classmethod
    def _uri(cls, v: str) -> str:
        if problem := uri_problem(v):
            raise ValueError(problem)
        return v

    def to_proto(self) -> deploy_pb2.WeightsSource:
        return deploy_pb2.WeightsSource(uri=self.uri, revision=self.revision,
                                        token_secret=self.token_secret,
                                        allow_patterns=self.allow_patterns)


class Lora(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=128)
    path: str = Field(min_length=1)


class Deployment(BaseModel):
    """One deployment as written in a file or sent to the deployments API."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")
    model: str = Field(min_length=1, max_length=128, pattern=r"^[^\s@]+$")
    engine: Literal["vllm", "trtllm", "sim", "python"] = "vllm"
    model_path: str = ""
    # Runtime settings and the engine's own arguments, YAML-natural (`max_model_len: 1024`,
    # `speculative_config: {method: ngram}`), dashes or underscores: basalt/engine_settings.py.
    engine_args: dict[str, JsonValue] = Field(default_factory=dict)
    accelerator: str = ""
    accelerator_count: int = Field(0, ge=0, le=64)
    allowed_regions: list[str] = Field(default_factory=list)
    preferred_regions: list[str] = Field(default_factory=list)
    routing_policy: Literal["kv", "round_robin", "least_loaded", "random", "session"] = "kv"
    # Per router: requests waiting for a replica with room. A burst is queued, not refused,
    # as an engine's own server would queue it (`vllm serve` has no bound); past it, 429.
    queue_limit: int = Field(DEFAULT_QUEUE_LIMIT, ge=0, le=100_000)
    queue_timeout_s: float = Field(30.0, gt=0, le=3600)
    loras: list[Lora] = Field(default_factory=list)
    # Given: a replica loads its weights from the node cache (see Weights).
    weights: Weights | None = None
    # Given: the autoscaler sets the replica count within these settings; absent: the count
    # is fixed at `replicas` (and `basalt scale`).
    autoscaling: Autoscaling | None = None
    request_backpressure_policy: Literal["queue_on_full", "reject_on_full"] = "queue_on_full"
    parked_limit: int = Field(256, ge=0, le=100_000)
    parked_timeout_s: float = Field(600.0, gt=0, le=3600)
    replicas: int = Field(1, ge=0, le=1000)
    kind: Literal["development", "published"] = "published"
    active: bool = True

    @field_validator("engine_args")
    @classmethod
    def _one_spelling(cls, v: dict[str, JsonValue]) -> dict[str, JsonValue]:
        seen: dict[str, str] = {}
        for key in v:
            if (name := normal_key(key)) in seen:
                raise ValueError(f"{key!r} and {seen[name]!r} are one setting: give it once")
            seen[name] = key
        return v

    def spec(self) -> deploy_pb2.DeploymentSpec:
        return deploy_pb2.DeploymentSpec(
            engine=self.engine, model_path=self.model_path,
            engine_args=encode_args(self.engine_args),
            accelerator=self.accelerator, accelerator_count=self.accelerator_count,
            allowed_regions=self.allowed_regions, preferred_regions=self.preferred_regions,
            routing_policy=self.routing_policy, queue_limit=self.queue_limit,
            queue_timeout_s=self.queue_timeout_s,
            loras=[deploy_pb2.LoraAdapter(name=x.name, path=x.path) for x in self.loras],
            autoscaling=self.autoscaling.to_proto() if self.autoscaling else None,
            request_backpressure_policy=self.request_backpressure_policy,
            parked_limit=self.parked_limit, parked_timeout_s=self.parked_timeout_s,
            weights=self.weights.to_proto() if self.weights else None,
        )

    def to_record(self, created_ts: float = 0.0) -> deploy_pb2.DeploymentRecord:
        status = (deploy_pb2.DEPLOYMENT_STATUS_ACTIVE if self.active
                  else deploy_pb2.DEPLOYMENT_STATUS_INACTIVE)
        replicas = self.replicas
        if self.autoscaling is not None:  # start within the autoscaler's bounds
            lo, hi = self.autoscaling.min_replica, self.autoscaling.max_replica
            replicas = min(max(replicas, lo), max(hi, lo))
        return deploy_pb2.DeploymentRecord(
            id=self.id, model=self.model, spec=self.spec(), status=status,
            desired_replicas=replicas, kind=self.kind, created_ts=created_ts,
        )


class Environment(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = Field(min_length=1)
    name: str = Field(pattern=r"^[a-zA-Z0-9][a-zA-Z0-9_-]{0,62}$")
    deployment_id: str = Field(min_length=1)

    def to_record(self) -> deploy_pb2.EnvironmentRecord:
        return deploy_pb2.EnvironmentRecord(
            model=self.model, name=self.name, deployment_id=self.deployment_id
        )


class DeployFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    deployments: list[Deployment] = Field(default_factory=list)
    environments: list[Environment] = Field(default_factory=list)


def load(path: str | Path, base_dir: Path | None = None) -> DeployFile:
    """Parse and validate a deployment file; relative model/LoRA paths resolve against
    `base_dir` (default: the current directory)."""
    raw: Any = yaml.safe_load(Path(path).read_text()) or {}
    parsed = DeployFile.model_validate(raw)
    base = base_dir or Path.cwd()
    for dep in parsed.deployments:
        if dep.model_path and not Path(dep.model_path).is_absolute():
            dep.model_path = str((base / dep.model_path).resolve())
        for lora in dep.loras:
            if not Path(lora.path).is_absolute():
                lora.path = str((base / lora.path).resolve())
        if dep.weights and "://" not in dep.weights.uri:
            dep.weights.uri = normal_uri(str(base / dep.weights.uri))
    return parsed
