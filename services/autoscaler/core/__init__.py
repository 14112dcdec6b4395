"""The autoscaler's rules, pure (no I/O, time as an argument): `settings` (a deployment's
autoscaling settings as the core reads them), `signals` (per-tick demand and latency, and what
a replica record says about cold starts), `decide` (one decision per deployment per tick),
`planner` (`on_tick(tick, inputs) -> effects` over every deployment)."""

__all__ = ["decide", "planner", "settings", "signals"]
