"""The OpenAI provider's reading of the event stream: text, usage and finish reason taken from
each `data:` line, anything else passed over, an error event raised as the SDK would."""

import json

import httpx2
import openai
import pytest

from imgate_runner.providers.base import Generation
from imgate_runner.providers.openai import _chunk_text

REQUEST = httpx2.Request("POST", "http://model.test/v1/chat/completions")


def line(payload: object) -> str:
    return f"data: {json.dumps(payload)}"


def test_text_usage_and_finish_reason_come_from_the_data_lines() -> None:
    generation = Generation()
    lines = [
        ": keep-alive",
        "",
        line({"choices": [{"delta": {"role": "assistant"}}]}),
        line({"choices": [{"delta": {"content": "Hel"}}]}),
        line({"choices": [{"delta": {"content": "lo"}, "finish_reason": "stop"}]}),
        line({"choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2}}),
        "data: [DONE]",
    ]
    texts = [_chunk_text(text, generation, REQUEST) for text in lines]
    assert [t for t in texts if t] == ["Hel", "lo"]
    usage = generation.usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.finish_reason) == (7, 2, "stop")


def test_an_error_event_is_raised_as_an_api_error() -> None:
    with pytest.raises(openai.APIError, match="overloaded"):
        _chunk_text(line({"error": {"message": "model overloaded"}}), Generation(), REQUEST)
