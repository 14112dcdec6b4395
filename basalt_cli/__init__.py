"""The `basalt` command and the local stack: the floor above the services (does I/O).

It may import the services, the benchmarks, the common lib and the tools; nothing imports it.
"""

__all__ = ["main"]

from basalt_cli.main import main
