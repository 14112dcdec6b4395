"""Generated protobuf and gRPC stubs of proto/basalt/pb/*.proto (`make proto`; no I/O)."""

__all__ = [
    "deploy_pb2", "deploy_pb2_grpc", "events_pb2", "events_pb2_grpc", "kserve_pb2",
    "kserve_pb2_grpc", "runtime_pb2", "runtime_pb2_grpc",
]
