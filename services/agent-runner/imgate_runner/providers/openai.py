"""`openai`: any OpenAI-compatible chat-completions endpoint, streaming, through the openai SDK."""

import json
from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

import httpx2
import openai

from imgate_common import telemetry
from imgate_common.db.models import Agent
from imgate_common.errors import FailureCategory, ProviderError
from imgate_runner.providers.base import (
    DEFAULT_MAX_CLIENTS,
    ChatMessage,
    ClientPool,
    Generation,
    ModelProvider,
)

# Local servers (llama.cpp, vLLM, Ollama) need no key, but the SDK insists on one.
PLACEHOLDER_KEY = "not-needed"


def map_error(exc: openai.OpenAIError) -> ProviderError:
    transient = False
    match exc:
        case openai.AuthenticationError() | openai.PermissionDeniedError():
            category = FailureCategory.AUTH_FAILED
        case openai.RateLimitError():
            category, transient = FailureCategory.RATE_LIMITED, True
        case openai.APITimeoutError():
            category = FailureCategory.TIMED_OUT
        case openai.BadRequestError() if "context" in str(exc).lower():
            category = FailureCategory.CONTEXT_TOO_LONG
        case openai.APIConnectionError() | openai.InternalServerError():
            category, transient = FailureCategory.PROVIDER_ERROR, True
        case _:
            category = FailureCategory.PROVIDER_ERROR
    return ProviderError(f"{type(exc).__name__}: {exc}", category, transient=transient)


def openai_message(message: ChatMessage) -> dict[str, Any]:
    if not message.images:
        return {"role": message.role, "content": message.content}
    parts: list[dict[str, Any]] = [{"type": "text", "text": message.content}]
    for image in message.images:
        url = f"data:{image.content_type};base64,{image.base64()}"
        parts.append({"type": "image_url", "image_url": {"url": url}})
    return {"role": message.role, "content": parts}


class OpenAIProvider(ModelProvider):
    name: ClassVar[str] = "openai"

    def __init__(self, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        self._clients: ClientPool[openai.AsyncOpenAI] = ClientPool(lambda c: c.close(), max_clients)

    @staticmethod
    def _new_client(agent: Agent, api_key: str | None) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            base_url=agent.base_url,
            api_key=api_key or PLACEHOLDER_KEY,
            timeout=agent.timeout_s,
            max_retries=0,  # the executor retries, before the first token only
        )

    async def shutdown(self) -> None:
        await self._clients.close_all()

    async def stream(
        self, agent: Agent, api_key: str | None, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        key = (agent.base_url, api_key, agent.timeout_s)
        async with self._clients.use(key, lambda: self._new_client(agent, api_key)) as client:
            async for text in self._chunks(client, agent, messages, generation):
                yield text

    async def _chunks(
        self, client: openai.AsyncOpenAI, agent: Agent, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        try:
            async with client.chat.completions.with_streaming_response.create(
                model=agent.model,
                messages=cast(Any, [openai_message(m) for m in messages]),
                temperature=agent.temperature,
                max_tokens=agent.max_output_tokens,
                stream=True,
                # The SDK's own HTTP client is not instrumented: pass the trace on by hand.
                extra_headers=telemetry.carrier(),
            ) as response:
                # The server-sent events read here rather than by the SDK's stream: it builds a
                # pydantic ChatCompletionChunk per token, which was a seventh of the runner's CPU.
                async for line in response.iter_lines():
                    text = _chunk_text(line, generation, response.http_response.request)
                    if text:
                        yield text
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc


def _chunk_text(line: str, generation: Generation, request: httpx2.Request) -> str | None:
    """One line of the event stream: the text it adds, with usage and finish reason noted.
    OpenAI-compatible servers send each chunk as a single `data:` line; `[DONE]` ends it."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if not data or data == "[DONE]":
        return None
    chunk = json.loads(data)
    if not isinstance(chunk, dict):
        return None
    error = chunk.get("error")
    if error:
        message = error.get("message") if isinstance(error, dict) else None
        raise openai.APIError(message or "An error occurred during streaming", request, body=error)
    usage = chunk.get("usage")
    if usage:
        generation.usage.prompt_tokens = usage.get("prompt_tokens")
        generation.usage.completion_tokens = usage.get("completion_tokens")
    choices = chunk.get("choices")
    if not choices:
        return None
    choice = choices[0]
    if choice.get("finish_reason"):
        generation.usage.finish_reason = choice["finish_reason"]
    delta = choice.get("delta")
    content = delta.get("content") if delta else None
    return content if isinstance(content, str) else None
