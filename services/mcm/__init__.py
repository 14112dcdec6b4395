"""basalt mcm: the control plane (deployments API, placement across clusters, reconcile loop,
scale commands, failover). Pure cores: `placement`, `blocklist`, `inventory`, `reconcile`;
I/O adapters: `store`, `providers`, `reconciler`, `scale`, `main` (`python -m services.mcm`)."""
