"""imsim as a real process for the connector's integration tests."""

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.openai_stub import free_port
from tools.devstack import LocalStack


@pytest.fixture(scope="module")
def imsim(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    data = tmp_path_factory.mktemp("imsim")
    stack = LocalStack(Path(data), log_dir=Path(data))
    try:
        yield stack.start_imsim(free_port(), [])
    finally:
        stack.stop()
