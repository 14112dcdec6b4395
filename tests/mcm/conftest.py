"""Control-plane test fixtures: each test module gets a nats-server of its own, so no
deployment or scale command of another module reaches the loop under test."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest
from nats.aio.client import Client

from basalt import bus
from basalt_tools.natsserver import NatsServer


@pytest.fixture(scope="module")
def nats(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NatsServer]:
    store = tmp_path_factory.mktemp(f"nats-{request.module.__name__.rsplit('.', 1)[-1]}")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def client(nats: NatsServer) -> AsyncIterator[Client]:
    nc = await bus.connect(nats.url, name="test-mcm")
    yield nc
    await nc.close()
