"""Property-suite fixtures: each test module gets a nats-server of its own, so what the fuzzers
write (deployments, keys, garbage records) never reaches another module's services."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
import structlog
from nats.aio.client import Client

from basalt import bus
from basalt_tools.natsserver import NatsServer


@pytest.fixture(scope="module")
def module_nats(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp(f"nats-{request.module.__name__.rsplit('.', 1)[-1]}")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
async def module_nc(module_nats: NatsServer) -> AsyncIterator[Client]:
    nc = await bus.connect(module_nats.url, name="test-property")
    yield nc
    await nc.close()


@pytest.fixture(scope="module", autouse=True)
def plain_logs() -> Iterator[None]:
    """Services log JSON lines here, as they do when they run, not through structlog's dev
    renderer: its rich tracebacks cost about a second per logged exception, and a fuzzer
    makes many. The previous configuration comes back after the module."""
    saved = structlog.get_config()
    structlog.configure(
        processors=[structlog.processors.add_log_level, structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(), cache_logger_on_first_use=False)
    yield
    structlog.configure(**saved)
