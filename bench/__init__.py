"""basalt benchmarks (`basalt bench ...`): each prints a markdown table and can record it in
docs/benchmarks.md. They may import the services and the tools, never the CLI."""

__all__ = ["chaos", "index_micro", "replay", "report", "routing", "routing_live", "runtime", "traces"]
