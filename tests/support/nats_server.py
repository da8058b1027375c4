"""A nats-server of a test module's own, so its streams are the test's to create and delete."""

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path

import nats
import pytest
from nats.js import JetStreamContext

from imgate_common.bus import STREAMS, provision_streams
from tests.support.openai_stub import free_port
from tools.devstack import LocalStack


@contextmanager
def private_nats_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Starts one with JetStream on a free port; yields its URL."""
    stack = LocalStack(Path(tmp_path_factory.mktemp("nats")), log_dir=Path(tmp_path_factory.mktemp("logs")))
    try:
        yield stack.start_nats(f"nats://127.0.0.1:{free_port()}")
    finally:
        stack.stop()


@asynccontextmanager
async def fresh_streams(url: str) -> AsyncIterator[JetStreamContext]:
    """JetStream on `url` with every stream of the contract, deleted again afterwards."""
    nc = await nats.connect(url)
    js = nc.jetstream()
    await provision_streams(js)
    try:
        yield js
    finally:
        for spec in STREAMS:
            await js.delete_stream(spec.name)
        await nc.close()
