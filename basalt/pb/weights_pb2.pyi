from basalt.pb import deploy_pb2 as _deploy_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WeightsState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    WEIGHTS_STATE_UNSPECIFIED: _ClassVar[WeightsState]
    WEIGHTS_STATE_FETCHING: _ClassVar[WeightsState]
    WEIGHTS_STATE_PRESENT: _ClassVar[WeightsState]
    WEIGHTS_STATE_FAILED: _ClassVar[WeightsState]
WEIGHTS_STATE_UNSPECIFIED: WeightsState
WEIGHTS_STATE_FETCHING: WeightsState
WEIGHTS_STATE_PRESENT: WeightsState
WEIGHTS_STATE_FAILED: WeightsState

class WeightsFile(_message.Message):
    __slots__ = ("path", "size", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    size: int
    sha256: str
    def __init__(self, path: _Optional[str] = ..., size: _Optional[int] = ..., sha256: _Optional[str] = ...) -> None: ...

class WeightsFetch(_message.Message):
    __slots__ = ("command_id", "node", "source", "replica_id", "requested_ts")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    REPLICA_ID_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_TS_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    node: str
    source: _deploy_pb2.WeightsSource
    replica_id: str
    requested_ts: float
    def __init__(self, command_id: _Optional[str] = ..., node: _Optional[str] = ..., source: _Optional[_Union[_deploy_pb2.WeightsSource, _Mapping]] = ..., replica_id: _Optional[str] = ..., requested_ts: _Optional[float] = ...) -> None: ...

class WeightsRevision(_message.Message):
    __slots__ = ("key", "source", "resolved", "state", "total_bytes", "present_bytes", "path", "error", "fetched_ts", "last_used_ts", "warm_bytes", "files", "fetched_bytes", "done")
    KEY_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    RESOLVED_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PRESENT_BYTES_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    FETCHED_TS_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TS_FIELD_NUMBER: _ClassVar[int]
    WARM_BYTES_FIELD_NUMBER: _ClassVar[int]
    FILES_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    key: str
    source: _deploy_pb2.WeightsSource
    resolved: str
    state: WeightsState
    total_bytes: int
    present_bytes: int
    path: str
    error: str
    fetched_ts: float
    last_used_ts: float
    warm_bytes: int
    files: int
    fetched_bytes: int
    done: _containers.RepeatedCompositeFieldContainer[WeightsDone]
    def __init__(self, key: _Optional[str] = ..., source: _Optional[_Union[_deploy_pb2.WeightsSource, _Mapping]] = ..., resolved: _Optional[str] = ..., state: _Optional[_Union[WeightsState, str]] = ..., total_bytes: _Optional[int] = ..., present_bytes: _Optional[int] = ..., path: _Optional[str] = ..., error: _Optional[str] = ..., fetched_ts: _Optional[float] = ..., last_used_ts: _Optional[float] = ..., warm_bytes: _Optional[int] = ..., files: _Optional[int] = ..., fetched_bytes: _Optional[int] = ..., done: _Optional[_Iterable[_Union[WeightsDone, _Mapping]]] = ...) -> None: ...

class WeightsDone(_message.Message):
    __slots__ = ("command_id", "tier", "fetched_bytes", "ts", "error")
    COMMAND_ID_FIELD_NUMBER: _ClassVar[int]
    TIER_FIELD_NUMBER: _ClassVar[int]
    FETCHED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    command_id: str
    tier: str
    fetched_bytes: int
    ts: float
    error: str
    def __init__(self, command_id: _Optional[str] = ..., tier: _Optional[str] = ..., fetched_bytes: _Optional[int] = ..., ts: _Optional[float] = ..., error: _Optional[str] = ...) -> None: ...

class NodeWeights(_message.Message):
    __slots__ = ("node", "revisions", "budget_bytes", "used_bytes", "fetch_bytes_per_s", "read_bytes_per_s", "queued_bytes", "heartbeat_ts")
    NODE_FIELD_NUMBER: _ClassVar[int]
    REVISIONS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_BYTES_FIELD_NUMBER: _ClassVar[int]
    USED_BYTES_FIELD_NUMBER: _ClassVar[int]
    FETCH_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    READ_BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    QUEUED_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_TS_FIELD_NUMBER: _ClassVar[int]
    node: str
    revisions: _containers.RepeatedCompositeFieldContainer[WeightsRevision]
    budget_bytes: int
    used_bytes: int
    fetch_bytes_per_s: float
    read_bytes_per_s: float
    queued_bytes: int
    heartbeat_ts: float
    def __init__(self, node: _Optional[str] = ..., revisions: _Optional[_Iterable[_Union[WeightsRevision, _Mapping]]] = ..., budget_bytes: _Optional[int] = ..., used_bytes: _Optional[int] = ..., fetch_bytes_per_s: _Optional[float] = ..., read_bytes_per_s: _Optional[float] = ..., queued_bytes: _Optional[int] = ..., heartbeat_ts: _Optional[float] = ...) -> None: ...

class WeightsProgress(_message.Message):
    __slots__ = ("node", "key", "done_bytes", "total_bytes", "bytes_per_s", "state", "error", "path", "ts")
    NODE_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    DONE_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_S_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    node: str
    key: str
    done_bytes: int
    total_bytes: int
    bytes_per_s: float
    state: WeightsState
    error: str
    path: str
    ts: float
    def __init__(self, node: _Optional[str] = ..., key: _Optional[str] = ..., done_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., bytes_per_s: _Optional[float] = ..., state: _Optional[_Union[WeightsState, str]] = ..., error: _Optional[str] = ..., path: _Optional[str] = ..., ts: _Optional[float] = ...) -> None: ...
