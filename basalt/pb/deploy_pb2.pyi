from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DeploymentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    DEPLOYMENT_STATUS_UNSPECIFIED: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_ACTIVE: _ClassVar[DeploymentStatus]
    DEPLOYMENT_STATUS_INACTIVE: _ClassVar[DeploymentStatus]

class KeyScope(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    KEY_SCOPE_UNSPECIFIED: _ClassVar[KeyScope]
    KEY_SCOPE_INFERENCE: _ClassVar[KeyScope]
    KEY_SCOPE_MANAGEMENT: _ClassVar[KeyScope]
DEPLOYMENT_STATUS_UNSPECIFIED: DeploymentStatus
DEPLOYMENT_STATUS_ACTIVE: DeploymentStatus
DEPLOYMENT_STATUS_INACTIVE: DeploymentStatus
KEY_SCOPE_UNSPECIFIED: KeyScope
KEY_SCOPE_INFERENCE: KeyScope
KEY_SCOPE_MANAGEMENT: KeyScope

class AutoscalingSettings(_message.Message):
    __slots__ = ("min_replica", "max_replica", "autoscaling_window", "scale_down_delay", "concurrency_target", "target_utilization_percentage", "target_in_flight_tokens", "scaling_mode", "panic_window", "panic_threshold_percentage", "ttft_p90_target_ms", "itl_p90_target_ms", "cold_start_lead", "scale_down_step")
    MIN_REPLICA_FIELD_NUMBER: _ClassVar[int]
    MAX_REPLICA_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_WINDOW_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_DELAY_FIELD_NUMBER: _ClassVar[int]
    CONCURRENCY_TARGET_FIELD_NUMBER: _ClassVar[int]
    TARGET_UTILIZATION_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    TARGET_IN_FLIGHT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    SCALING_MODE_FIELD_NUMBER: _ClassVar[int]
    PANIC_WINDOW_FIELD_NUMBER: _ClassVar[int]
    PANIC_THRESHOLD_PERCENTAGE_FIELD_NUMBER: _ClassVar[int]
    TTFT_P90_TARGET_MS_FIELD_NUMBER: _ClassVar[int]
    ITL_P90_TARGET_MS_FIELD_NUMBER: _ClassVar[int]
    COLD_START_LEAD_FIELD_NUMBER: _ClassVar[int]
    SCALE_DOWN_STEP_FIELD_NUMBER: _ClassVar[int]
    min_replica: int
    max_replica: int
    autoscaling_window: int
    scale_down_delay: int
    concurrency_target: int
    target_utilization_percentage: int
    target_in_flight_tokens: int
    scaling_mode: str
    panic_window: int
    panic_threshold_percentage: int
    ttft_p90_target_ms: float
    itl_p90_target_ms: float
    cold_start_lead: bool
    scale_down_step: int
    def __init__(self, min_replica: _Optional[int] = ..., max_replica: _Optional[int] = ..., autoscaling_window: _Optional[int] = ..., scale_down_delay: _Optional[int] = ..., concurrency_target: _Optional[int] = ..., target_utilization_percentage: _Optional[int] = ..., target_in_flight_tokens: _Optional[int] = ..., scaling_mode: _Optional[str] = ..., panic_window: _Optional[int] = ..., panic_threshold_percentage: _Optional[int] = ..., ttft_p90_target_ms: _Optional[float] = ..., itl_p90_target_ms: _Optional[float] = ..., cold_start_lead: _Optional[bool] = ..., scale_down_step: _Optional[int] = ...) -> None: ...

class LoraAdapter(_message.Message):
    __slots__ = ("name", "path")
    NAME_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    name: str
    path: str
    def __init__(self, name: _Optional[str] = ..., path: _Optional[str] = ...) -> None: ...

class DeploymentSpec(_message.Message):
    __slots__ = ("engine", "model_path", "engine_args", "accelerator", "accelerator_count", "allowed_regions", "preferred_regions", "routing_policy", "queue_limit", "queue_timeout_s", "loras", "autoscaling", "request_backpressure_policy", "parked_limit", "parked_timeout_s", "weights")
    class EngineArgsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    MODEL_PATH_FIELD_NUMBER: _ClassVar[int]
    ENGINE_ARGS_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_FIELD_NUMBER: _ClassVar[int]
    ACCELERATOR_COUNT_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    PREFERRED_REGIONS_FIELD_NUMBER: _ClassVar[int]
    ROUTING_POLICY_FIELD_NUMBER: _ClassVar[int]
    QUEUE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    QUEUE_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    LORAS_FIELD_NUMBER: _ClassVar[int]
    AUTOSCALING_FIELD_NUMBER: _ClassVar[int]
    REQUEST_BACKPRESSURE_POLICY_FIELD_NUMBER: _ClassVar[int]
    PARKED_LIMIT_FIELD_NUMBER: _ClassVar[int]
    PARKED_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    engine: str
    model_path: str
    engine_args: _containers.ScalarMap[str, str]
    accelerator: str
    accelerator_count: int
    allowed_regions: _containers.RepeatedScalarFieldContainer[str]
    preferred_regions: _containers.RepeatedScalarFieldContainer[str]
    routing_policy: str
    queue_limit: int
    queue_timeout_s: float
    loras: _containers.RepeatedCompositeFieldContainer[LoraAdapter]
    autoscaling: AutoscalingSettings
    request_backpressure_policy: str
    parked_limit: int
    parked_timeout_s: float
    weights: WeightsSource
    def __init__(self, engine: _Optional[str] = ..., model_path: _Optional[str] = ..., engine_args: _Optional[_Mapping[str, str]] = ..., accelerator: _Optional[str] = ..., accelerator_count: _Optional[int] = ..., allowed_regions: _Optional[_Iterable[str]] = ..., preferred_regions: _Optional[_Iterable[str]] = ..., routing_policy: _Optional[str] = ..., queue_limit: _Optional[int] = ..., queue_timeout_s: _Optional[float] = ..., loras: _Optional[_Iterable[_Union[LoraAdapter, _Mapping]]] = ..., autoscaling: _Optional[_Union[AutoscalingSettings, _Mapping]] = ..., request_backpressure_policy: _Optional[str] = ..., parked_limit: _Optional[int] = ..., parked_timeout_s: _Optional[float] = ..., weights: _Optional[_Union[WeightsSource, _Mapping]] = ...) -> None: ...

class WeightsSource(_message.Message):
    __slots__ = ("uri", "revision", "token_secret", "allow_patterns")
    URI_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    TOKEN_SECRET_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PATTERNS_FIELD_NUMBER: _ClassVar[int]
    uri: str
    revision: str
    token_secret: str
    allow_patterns: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, uri: _Optional[str] = ..., revision: _Optional[str] = ..., token_secret: _Optional[str] = ..., allow_patterns: _Optional[_Iterable[str]] = ...) -> None: ...

class DeploymentRecord(_message.Message):
    __slots__ = ("id", "model", "spec", "status", "desired_replicas", "kind", "created_ts", "generation", "retry_ts")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    DESIRED_REPLICAS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    CREATED_TS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    RETRY_TS_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    spec: DeploymentSpec
    status: DeploymentStatus
    desired_replicas: int
    kind: str
    created_ts: float
    generation: int
    retry_ts: float
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., spec: _Optional[_Union[DeploymentSpec, _Mapping]] = ..., status: _Optional[_Union[DeploymentStatus, str]] = ..., desired_replicas: _Optional[int] = ..., kind: _Optional[str] = ..., created_ts: _Optional[float] = ..., generation: _Optional[int] = ..., retry_ts: _Optional[float] = ...) -> None: ...

class EnvironmentRecord(_message.Message):
    __slots__ = ("model", "name", "deployment_id")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    model: str
    name: str
    deployment_id: str
    def __init__(self, model: _Optional[str] = ..., name: _Optional[str] = ..., deployment_id: _Optional[str] = ...) -> None: ...

class ApiKeyRecord(_message.Message):
    __slots__ = ("key_id", "sha256", "name", "created_ts", "scope", "models", "expires_ts", "rate_per_s", "max_concurrency")
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CREATED_TS_FIELD_NUMBER: _ClassVar[int]
    SCOPE_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_TS_FIELD_NUMBER: _ClassVar[int]
    RATE_PER_S_FIELD_NUMBER: _ClassVar[int]
    MAX_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    key_id: str
    sha256: str
    name: str
    created_ts: float
    scope: KeyScope
    models: _containers.RepeatedScalarFieldContainer[str]
    expires_ts: float
    rate_per_s: float
    max_concurrency: int
    def __init__(self, key_id: _Optional[str] = ..., sha256: _Optional[str] = ..., name: _Optional[str] = ..., created_ts: _Optional[float] = ..., scope: _Optional[_Union[KeyScope, str]] = ..., models: _Optional[_Iterable[str]] = ..., expires_ts: _Optional[float] = ..., rate_per_s: _Optional[float] = ..., max_concurrency: _Optional[int] = ...) -> None: ...

class ScaleCommand(_message.Message):
    __slots__ = ("command_id", "deployment_id", "replicas", "source", "ts")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    deployment_id: str
    replicas: int
    source: str
    ts: float
    def __init__(self, command_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., replicas: _Optional[int] = ..., source: _Optional[str] = ..., ts: _Optional[float] = ...) -> None: ...

class RequestRecord(_message.Message):
    __slots__ = ("request_id", "deployment_id", "replica_id", "queue_wait_ms", "ttft_ms", "prompt_tokens", "completion_tokens", "cached_tokens", "outcome", "ts", "model", "lora_name", "e2e_ms")
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    QUEUE_WAIT_MS_FIELD_NUMBER: _ClassVar[int]
    TTFT_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    CACHED_TOKENS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LORA_NAME_FIELD_NUMBER: _ClassVar[int]
    E2E_MS_FIELD_NUMBER: _ClassVar[int]
    request_id: str
    deployment_id: str
    replica_id: str
    queue_wait_ms: float
    ttft_ms: float
    prompt_tokens: int
    completion_tokens: int
    cached_tokens: int
    outcome: str
    ts: float
    model: str
    lora_name: str
    e2e_ms: float
    def __init__(self, request_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., replica_id: _Optional[str] = ..., queue_wait_ms: _Optional[float] = ..., ttft_ms: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., cached_tokens: _Optional[int] = ..., outcome: _Optional[str] = ..., ts: _Optional[float] = ..., model: _Optional[str] = ..., lora_name: _Optional[str] = ..., e2e_ms: _Optional[float] = ...) -> None: ...

class DemandReport(_message.Message):
    __slots__ = ("router_id", "deployment_id", "ts", "in_flight", "parked", "queued", "arrivals", "avg_concurrency", "avg_in_flight_tokens", "interval_s", "prompt_tokens", "completion_tokens")
    ROUTER_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    PARKED_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    ARRIVALS_FIELD_NUMBER: _ClassVar[int]
    AVG_CONCURRENCY_FIELD_NUMBER: _ClassVar[int]
    AVG_IN_FLIGHT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    router_id: str
    deployment_id: str
    ts: float
    in_flight: int
    parked: int
    queued: int
    arrivals: int
    avg_concurrency: float
    avg_in_flight_tokens: float
    interval_s: float
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, router_id: _Optional[str] = ..., deployment_id: _Optional[str] = ..., ts: _Optional[float] = ..., in_flight: _Optional[int] = ..., parked: _Optional[int] = ..., queued: _Optional[int] = ..., arrivals: _Optional[int] = ..., avg_concurrency: _Optional[float] = ..., avg_in_flight_tokens: _Optional[float] = ..., interval_s: _Optional[float] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class WakeRequest(_message.Message):
    __slots__ = ("deployment_id", "source", "ts", "parked")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    PARKED_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    source: str
    ts: float
    parked: int
    def __init__(self, deployment_id: _Optional[str] = ..., source: _Optional[str] = ..., ts: _Optional[float] = ..., parked: _Optional[int] = ...) -> None: ...

class HeldCount(_message.Message):
    __slots__ = ("ts", "replicas")
    TS_FIELD_NUMBER: _ClassVar[int]
    REPLICAS_FIELD_NUMBER: _ClassVar[int]
    ts: float
    replicas: int
    def __init__(self, ts: _Optional[float] = ..., replicas: _Optional[int] = ...) -> None: ...

class AutoscalerDecision(_message.Message):
    __slots__ = ("deployment_id", "desired", "reason", "ts", "panic", "holder", "held", "panic_since", "panic_last_ts", "ready", "published")
    DEPLOYMENT_ID_FIELD_NUMBER: _ClassVar[int]
    DESIRED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    PANIC_FIELD_NUMBER: _ClassVar[int]
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    PANIC_SINCE_FIELD_NUMBER: _ClassVar[int]
    PANIC_LAST_TS_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    PUBLISHED_FIELD_NUMBER: _ClassVar[int]
    deployment_id: str
    desired: int
    reason: str
    ts: float
    panic: bool
    holder: str
    held: _containers.RepeatedCompositeFieldContainer[HeldCount]
    panic_since: float
    panic_last_ts: float
    ready: int
    published: int
    def __init__(self, deployment_id: _Optional[str] = ..., desired: _Optional[int] = ..., reason: _Optional[str] = ..., ts: _Optional[float] = ..., panic: _Optional[bool] = ..., holder: _Optional[str] = ..., held: _Optional[_Iterable[_Union[HeldCount, _Mapping]]] = ..., panic_since: _Optional[float] = ..., panic_last_ts: _Optional[float] = ..., ready: _Optional[int] = ..., published: _Optional[int] = ...) -> None: ...

class AutoscalerLease(_message.Message):
    __slots__ = ("holder", "expires_ts")
    HOLDER_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_TS_FIELD_NUMBER: _ClassVar[int]
    holder: str
    expires_ts: float
    def __init__(self, holder: _Optional[str] = ..., expires_ts: _Optional[float] = ...) -> None: ...
