"""Prometheus /metrics endpoint for a service (does I/O: starts an HTTP server)."""

from __future__ import annotations

from prometheus_client import start_http_server


def serve_metrics(host: str, port: int) -> int:
    """Serve the default registry at http://host:port/metrics; returns the bound port."""
    server, _thread = start_http_server(port, addr=host)
    return int(server.server_port)
