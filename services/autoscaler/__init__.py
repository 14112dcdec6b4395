"""basalt autoscaler service: decides each autoscaled deployment's replica count every tick
from the routers' demand, request latencies and replica records, and sends scale commands.
`core/` holds the rules (pure); `inputs` (NATS reads), `lease` (leader lease), `main` (wiring)."""

__all__ = ["config", "core", "inputs", "lease", "main"]
