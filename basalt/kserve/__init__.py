"""The KServe v2 / Open Inference Protocol codec, in one place (no I/O but `server`'s asyncio):
`codec` (the conventions; re-exports `requests` and `responses`), `requests` (reading tensors
and sampling parameters), `responses` (Triton-shaped responses), `server` (a stream's
interleaving, closing and failure logging, shared by the runtime's and the router's servicers).

This package's `__init__` imports nothing, so `basalt.kserve.server` can be imported beside
tritonclient; `codec`, `requests` and `responses` load basalt.pb.kserve_pb2 and must not be.
"""

__all__ = ["codec", "requests", "responses", "server"]
