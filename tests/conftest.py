"""Shared fixtures: a real nats-server on a free port, and the tiny test model built locally."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from basalt_tools.natsserver import NatsServer

REPO = Path(__file__).resolve().parent.parent
# Built once per checkout by `make test` (basalt make-tiny-model); rebuilt here when missing.
TINY_MODEL_DIR = Path(os.environ.get("BASALT_TINY_MODEL", REPO / ".basalt" / "models" / "tiny-llama"))


@pytest.fixture(scope="session")
def nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NatsServer]:
    """A real nats-server with JetStream, its store in a temporary folder."""
    store = tmp_path_factory.mktemp("nats")
    server = NatsServer(store_dir=store, log_file=store / "nats.log").start()
    yield server
    server.stop()


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[object]:
    """A NATS client connected to the session's server."""
    from basalt.bus import connect

    client = await connect(nats_server.url, name="test")
    yield client
    await client.close()


@pytest.fixture(scope="session")
def tiny_model() -> Path:
    """A tiny Llama model (random weights, locally trained tokenizer) and a tiny LoRA adapter."""
    from basalt_tools.tinymodel import make_tiny_model

    return make_tiny_model(TINY_MODEL_DIR)
