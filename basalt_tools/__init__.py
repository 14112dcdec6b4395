"""Tools used by the tests, the benchmarks and the CLI, never by a service: the tiny model
builder and the nats-server launcher (both do I/O). They import only the common lib."""

__all__ = ["natsserver", "tinymodel"]
