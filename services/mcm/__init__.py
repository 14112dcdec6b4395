"""basalt mcm: the control plane (deployments API, placement across clusters, reconcile loop,
scale commands, failover). Its rules are in `core/` (pure); beside it the adapters: `store`
(NATS KV), `api` (FastAPI), `reconciler` (the loop), `scale` (JetStream consumer),
`providers/` (local processes, the simcloud SIMULATOR), `config`, and `main` wiring them
(`python -m services.mcm`)."""

__all__ = ["api", "config", "core", "main", "providers", "reconciler", "scale", "store"]
