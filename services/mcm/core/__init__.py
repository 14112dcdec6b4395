"""The control plane's rules, pure (no I/O, time as an argument): `inventory` (clusters and
ids), `placement` (rank clusters), `blocklist` (blocks after provider errors), `reconcile`
(the plan), `liveness` (who is alive, who vanished, start-failure backoff), `scaling` (which
scale command applies), `resources` (API bodies and state transitions), `status` (views),
`provider` (the provider interface and its data), `errors` and `api_errors` (errors that carry
data; the API maps them to HTTP statuses)."""

__all__ = [
    "api_errors", "blocklist", "errors", "inventory", "liveness", "placement", "provider",
    "reconcile", "resources", "scaling", "status",
]
