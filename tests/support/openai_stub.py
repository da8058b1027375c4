"""The scripted OpenAI-compatible model the tests use: `tools.modelsim` with test defaults.

It streams a deterministic answer word by word at once (no time to first token), records every
request it gets, and can be told to fail with a given HTTP status so error mapping is tested
against real HTTP. The server itself lives in `tools/modelsim.py`, shared with the load and
fault tools.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from tools.modelsim import Answer, ModelSim, free_port, serve_model

__all__ = ["ScriptedModel", "default_answer", "free_port", "serve_scripted_model"]


def default_answer(messages: list[dict[str, Any]]) -> str:
    users = [m["content"] for m in messages if m["role"] == "user"]
    return f"Answer {len(users)}: you said «{users[-1]}» after {len(users) - 1} earlier turns."


@dataclass
class ScriptedModel(ModelSim):
    answer: Answer | None = default_answer
    word_delay_s: float = 0.01
    first_token_delay_s: float = 0.0


@contextmanager
def serve_scripted_model(model: ScriptedModel) -> Iterator[str]:
    """Serve on a free loopback port in a thread; yields the base URL (ending in /v1)."""
    with serve_model(model) as url:
        yield url
