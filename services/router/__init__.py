"""basalt router: the OpenAI HTTP and KServe v2 gRPC front doors; tokenizes and routes each
request to a replica by KV-cache overlap, LoRA, region and load.

`core/` holds the rules (pure); beside it the adapters: `watchers` (NATS: records, KV events,
load), `dispatch` (gRPC to replicas: queue, failover, request records), `openai_api` (FastAPI),
`kserve` (KServe v2 gRPC), `tokenizers`, `status_codes` (errors → HTTP / gRPC), `metrics`,
`access_log` (one line per HTTP request), `docs_page` (/docs, /openapi.json), `config`, and
`main` wiring them.
"""

__all__ = [
    "access_log", "body_limit", "config", "core", "dispatch", "docs_page", "kserve", "main",
    "metrics", "openai_api", "openai_types", "status_codes", "tokenizers", "watchers",
]
