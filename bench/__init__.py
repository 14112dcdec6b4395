"""basalt benchmarks: each module has a `run(json_out=None) -> dict` that prints a markdown table."""
