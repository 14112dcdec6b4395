"""The runtime's rules, pure (no I/O): the `Engine` interface and its data types (`engine`),
proto ↔ engine conversions (`convert`), errors that carry data (`errors`), latency windows
(`latency`), the replica's cache mirror rebuilt from its own KV events (`mirror`) and where
a start's time went (`phases`)."""

__all__ = ["convert", "engine", "errors", "latency", "mirror", "phases"]
