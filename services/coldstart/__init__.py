"""basalt coldstart service: one node's weight cache. Fetches a revision's files once (from a
folder, an HTTP server, the Hub or an object store), stores them by sha256, checks them, keeps
hot revisions in memory, and publishes what the node holds so placement can prefer it.
`core/` holds the rules (pure); `sources` (where weights come from), `store` (the cache on
disk), `main` (NATS wiring: commands, bucket, progress)."""

__all__ = ["config", "core", "main", "sources", "store"]
