"""The router's rules, pure (no I/O, time and randomness as arguments): `hashing` (its own
chained block hash), `index` + `index_tables` + `index_records` (which replicas hold how many leading blocks:
array-backed tables),
`policy` (scoring a request's candidates), `fleet` (replica records, load and in-flight work →
`Candidate`s), `deployments` (model name → deployment), `failover` (queue admission, what a
failed call means, retry and backoff), `access` (a request's access-log entry and line, the
outcome of an error), `types`, `errors` (errors carrying data)."""

__all__ = [
    "access", "deployments", "errors", "failover", "fleet", "hashing", "index", "index_records",
    "index_tables", "policy", "types",
]
