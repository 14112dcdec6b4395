"""basalt.client: a typed SDK for basalt's deployments API and the router's OpenAI door, sync
(`Client`) and async (`AsyncClient`) (does I/O: HTTP over httpx in `http`; `KeyAdmin` over NATS
in `keys`; `calls`, `views` and `errors` do none).

Both clients share one description of every call (`Call`: method, path, body, how to read the
answer), so they differ only in how they send it. Results are dataclasses that keep the whole
answer in `raw`: a field the server adds later is there before this module names it.

    with Client("http://127.0.0.1:8081", key=open(".basalt/management-key").read().strip()) as c:
        dep = c.create_deployment("tiny", {"id": "tiny-v2", "engine": "sim", "replicas": 1})
        c.scale("tiny", "tiny-v2", 2)
"""

__all__ = [
    "DEFAULT_INFERENCE_URL", "DEFAULT_URL", "Applied", "AsyncClient", "BasaltError", "Call",
    "Change", "Client", "Cluster", "Deployment", "Environment", "Health", "KeyAdmin", "Model",
    "Promoted", "Replica", "Unreachable", "calls", "errors", "http", "keys", "read_response",
    "views",
]

from .calls import Call, calls, read_response
from .errors import BasaltError, Unreachable
from .http import DEFAULT_INFERENCE_URL, DEFAULT_URL, AsyncClient, Client
from .keys import KeyAdmin
from .views import (
    Applied,
    Change,
    Cluster,
    Deployment,
    Environment,
    Health,
    Model,
    Promoted,
    Replica,
)
