"""`openai`: any OpenAI-compatible chat-completions endpoint, streaming, through the openai SDK."""

from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

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
            response = await client.chat.completions.create(
                model=agent.model,
                messages=cast(Any, [openai_message(m) for m in messages]),
                temperature=agent.temperature,
                max_tokens=agent.max_output_tokens,
                stream=True,
                # The SDK's own HTTP client is not instrumented: pass the trace on by hand.
                extra_headers=telemetry.carrier(),
            )
            async for chunk in response:
                if chunk.usage:
                    generation.usage.prompt_tokens = chunk.usage.prompt_tokens
                    generation.usage.completion_tokens = chunk.usage.completion_tokens
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                if choice.finish_reason:
                    generation.usage.finish_reason = choice.finish_reason
                if choice.delta and choice.delta.content:
                    yield choice.delta.content
        except openai.OpenAIError as exc:
            raise map_error(exc) from exc
