"""basalt runtime: one replica = one model in one engine, served over gRPC; KV events on NATS."""
