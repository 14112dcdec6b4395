from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ReplicaState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    REPLICA_STATE_UNSPECIFIED: _ClassVar[ReplicaState]
    REPLICA_STATE_LOADING: _ClassVar[ReplicaState]
    REPLICA_STATE_READY: _ClassVar[ReplicaState]
    REPLICA_STATE_DRAINING: _ClassVar[ReplicaState]
REPLICA_STATE_UNSPECIFIED: ReplicaState
REPLICA_STATE_LOADING: ReplicaState
REPLICA_STATE_READY: ReplicaState
REPLICA_STATE_DRAINING: ReplicaState

class StartPhases(_message.Message):
    __slots__ = ("placed_ts", "fetched_ts", "fetched_bytes", "tier", "launched_ts", "loaded_ts", "weights_bytes", "load_bytes_per_s", "engine_ts", "ready_ts", "first_token_ts")
    PLACED_TS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_TS_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    LAUNCHED_TS_FIELD_NUMBER: _ClassVar[int]
    LOADED_TS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    ENGINE_TS_FIELD_NUMBER: _ClassVar[int]
    READY_TS_FIELD_NUMBER: _ClassVar[int]
    FIRST_TOKEN_TS_FIELD_NUMBER: _ClassVar[int]
    placed_ts: float
    fetched_ts: float
    fetched_bytes: int
    tier: str
    launched_ts: float
    loaded_ts: float
    weights_bytes: int
    load_bytes_per_s: float
    engine_ts: float
    ready_ts: float
    first_token_ts: float
    def __init__(self, placed_ts: _Optional[float] = ..., fetched_ts: _Optional[float] = ..., fetched_bytes: _Optional[int] = ..., tier: _Optional[str] = ..., launched_ts: _Optional[float] = ..., loaded_ts: _Optional[float] = ..., weights_bytes: _Optional[int] = ..., load_bytes_per_s: _Optional[float] = ..., engine_ts: _Optional[float] = ..., ready_ts: _Optional[float] = ..., first_token_ts: _Optional[float] = ...) -> None: ...

class BlockStored(_message.Message):
    __slots__ = ("block_hashes", "parent_block_hash", "token_ids", "block_size", "lora_name")
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    PARENT_BLOCK_HASH_FIELD_NUMBER: _ClassVar[int]
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    LORA_NAME_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    parent_block_hash: int
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    block_size: int
    lora_name: str
    def __init__(self, block_hashes: _Optional[_Iterable[int]] = ..., parent_block_hash: _Optional[int] = ..., token_ids: _Optional[_Iterable[int]] = ..., block_size: _Optional[int] = ..., lora_name: _Optional[str] = ...) -> None: ...

class BlockRemoved(_message.Message):
    __slots__ = ("block_hashes",)
    BLOCK_HASHES_FIELD_NUMBER: _ClassVar[int]
    block_hashes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, block_hashes: _Optional[_Iterable[int]] = ...) -> None: ...

class AllBlocksCleared(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class KvEvent(_message.Message):
    __slots__ = ("stored", "removed", "cleared")
    STORED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    CLEARED_FIELD_NUMBER: _ClassVar[int]
    stored: BlockStored
    removed: BlockRemoved
    cleared: AllBlocksCleared
    def __init__(self, stored: _Optional[_Union[BlockStored, _Mapping]] = ..., removed: _Optional[_Union[BlockRemoved, _Mapping]] = ..., cleared: _Optional[_Union[AllBlocksCleared, _Mapping]] = ...) -> None: ...

class KvEventBatch(_message.Message):
    __slots__ = ("replica_id", "seq", "ts", "events", "epoch", "signature")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    seq: int
    ts: float
    events: _containers.RepeatedCompositeFieldContainer[KvEvent]
    epoch: str
    signature: bytes
    def __init__(self, replica_id: _Optional[str] = ..., seq: _Optional[int] = ..., ts: _Optional[float] = ..., events: _Optional[_Iterable[_Union[KvEvent, _Mapping]]] = ..., epoch: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...

class LatencySummary(_message.Message):
    __slots__ = ("p50_ms", "p90_ms", "p99_ms", "count")
    P50_MS_FIELD_NUMBER: _ClassVar[int]
    P90_MS_FIELD_NUMBER: _ClassVar[int]
    P99_MS_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    p50_ms: float
    p90_ms: float
    p99_ms: float
    count: int
    def __init__(self, p50_ms: _Optional[float] = ..., p90_ms: _Optional[float] = ..., p99_ms: _Optional[float] = ..., count: _Optional[int] = ...) -> None: ...

class LoadReport(_message.Message):
    __slots__ = ("replica_id", "deployment", "ts", "num_running", "num_waiting", "kv_usage", "kv_blocks_total", "kv_blocks_active", "ttft", "itl", "generated_tokens_total", "signature")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    NUM_RUNNING_FIELD_NUMBER: _ClassVar[int]
    NUM_WAITING_FIELD_NUMBER: _ClassVar[int]
    KV_USAGE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_ACTIVE_FIELD_NUMBER: _ClassVar[int]
    TTFT_FIELD_NUMBER: _ClassVar[int]
    ITL_FIELD_NUMBER: _ClassVar[int]
    GENERATED_TOKENS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    deployment: str
    ts: float
    num_running: int
    num_waiting: int
    kv_usage: float
    kv_blocks_total: int
    kv_blocks_active: int
    ttft: LatencySummary
    itl: LatencySummary
    generated_tokens_total: int
    signature: bytes
    def __init__(self, replica_id: _Optional[str] = ..., deployment: _Optional[str] = ..., ts: _Optional[float] = ..., num_running: _Optional[int] = ..., num_waiting: _Optional[int] = ..., kv_usage: _Optional[float] = ..., kv_blocks_total: _Optional[int] = ..., kv_blocks_active: _Optional[int] = ..., ttft: _Optional[_Union[LatencySummary, _Mapping]] = ..., itl: _Optional[_Union[LatencySummary, _Mapping]] = ..., generated_tokens_total: _Optional[int] = ..., signature: _Optional[bytes] = ...) -> None: ...

class ReplicaRecord(_message.Message):
    __slots__ = ("replica_id", "deployment", "model", "engine", "grpc_address", "region", "zone", "cluster", "lora_adapters", "kv_block_size", "kv_blocks_total", "state", "heartbeat_ts", "owner", "max_model_len", "epoch", "metrics_address", "started_ts", "ready_ts", "start", "weights_revision", "signature")
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    DEPLOYMENT_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    ENGINE_FIELD_NUMBER: _ClassVar[int]
    GRPC_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    REGION_FIELD_NUMBER: _ClassVar[int]
    ZONE_FIELD_NUMBER: _ClassVar[int]
    CLUSTER_FIELD_NUMBER: _ClassVar[int]
    LORA_ADAPTERS_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCK_SIZE_FIELD_NUMBER: _ClassVar[int]
    KV_BLOCKS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TS_FIELD_NUMBER: _ClassVar[int]
    OWNER_FIELD_NUMBER: _ClassVar[int]
    MAX_MODEL_LEN_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    METRICS_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    STARTED_TS_FIELD_NUMBER: _ClassVar[int]
    READY_TS_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_REVISION_FIELD_NUMBER: _ClassVar[int]
    SIGNATURE_FIELD_NUMBER: _ClassVar[int]
    replica_id: str
    deployment: str
    model: str
    engine: str
    grpc_address: str
    region: str
    zone: str
    cluster: str
    lora_adapters: _containers.RepeatedScalarFieldContainer[str]
    kv_block_size: int
    kv_blocks_total: int
    state: ReplicaState
    heartbeat_ts: float
    owner: str
    max_model_len: int
    epoch: str
    metrics_address: str
    started_ts: float
    ready_ts: float
    start: StartPhases
    weights_revision: str
    signature: bytes
    def __init__(self, replica_id: _Optional[str] = ..., deployment: _Optional[str] = ..., model: _Optional[str] = ..., engine: _Optional[str] = ..., grpc_address: _Optional[str] = ..., region: _Optional[str] = ..., zone: _Optional[str] = ..., cluster: _Optional[str] = ..., lora_adapters: _Optional[_Iterable[str]] = ..., kv_block_size: _Optional[int] = ..., kv_blocks_total: _Optional[int] = ..., state: _Optional[_Union[ReplicaState, str]] = ..., heartbeat_ts: _Optional[float] = ..., owner: _Optional[str] = ..., max_model_len: _Optional[int] = ..., epoch: _Optional[str] = ..., metrics_address: _Optional[str] = ..., started_ts: _Optional[float] = ..., ready_ts: _Optional[float] = ..., start: _Optional[_Union[StartPhases, _Mapping]] = ..., weights_revision: _Optional[str] = ..., signature: _Optional[bytes] = ...) -> None: ...
