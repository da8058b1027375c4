"""`anthropic`: the Messages API, streaming, through the anthropic SDK."""

from collections.abc import AsyncIterator
from typing import Any, ClassVar, cast

import anthropic

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


def map_error(exc: anthropic.AnthropicError) -> ProviderError:
    transient = False
    match exc:
        case anthropic.AuthenticationError() | anthropic.PermissionDeniedError():
            category = FailureCategory.AUTH_FAILED
        case anthropic.RateLimitError():
            category, transient = FailureCategory.RATE_LIMITED, True
        case anthropic.APITimeoutError():
            category = FailureCategory.TIMED_OUT
        case anthropic.BadRequestError() if "prompt is too long" in str(exc) or "context" in str(exc):
            category = FailureCategory.CONTEXT_TOO_LONG
        case anthropic.APIConnectionError() | anthropic.InternalServerError():
            category, transient = FailureCategory.PROVIDER_ERROR, True
        case anthropic.APIStatusError() if exc.status_code == 529:  # overloaded
            category, transient = FailureCategory.RATE_LIMITED, True
        case _:
            category = FailureCategory.PROVIDER_ERROR
    return ProviderError(f"{type(exc).__name__}: {exc}", category, transient=transient)


def split_system(messages: list[ChatMessage]) -> tuple[str, list[dict[str, Any]]]:
    """The Messages API takes the system prompt apart and turns that alternate user/assistant."""
    system = "\n\n".join(m.content for m in messages if m.role == "system")
    turns: list[dict[str, Any]] = []
    for message in (m for m in messages if m.role != "system"):
        blocks: list[dict[str, Any]] = [
            {"type": "image", "source": {"type": "base64", "media_type": i.content_type, "data": i.base64()}}
            for i in message.images
        ]
        blocks.append({"type": "text", "text": message.content})
        if turns and turns[-1]["role"] == message.role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": message.role, "content": blocks})
    return system, turns


class AnthropicProvider(ModelProvider):
    name: ClassVar[str] = "anthropic"

    def __init__(self, max_clients: int = DEFAULT_MAX_CLIENTS) -> None:
        self._clients: ClientPool[anthropic.AsyncAnthropic] = ClientPool(lambda c: c.close(), max_clients)

    @staticmethod
    def _new_client(agent: Agent, api_key: str) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            base_url=agent.base_url,
            api_key=api_key,
            timeout=agent.timeout_s,
            max_retries=0,  # the executor retries, before the first token only
        )

    async def shutdown(self) -> None:
        await self._clients.close_all()

    async def stream(
        self, agent: Agent, api_key: str | None, messages: list[ChatMessage], generation: Generation
    ) -> AsyncIterator[str]:
        if not api_key:
            raise ProviderError("anthropic agent without an API key", FailureCategory.NOT_CONFIGURED)
        system, turns = split_system(messages)
        request: dict[str, Any] = {
            "model": agent.model,
            # No temperature: the Messages API of the SDK generation we pin no longer takes one.
            "max_tokens": agent.max_output_tokens,
            "messages": turns,
            "stream": True,
            # The SDK's own HTTP client is not instrumented: pass the trace on by hand.
            "extra_headers": telemetry.carrier(),
        }
        if system:
            request["system"] = system
        key = (agent.base_url, api_key, agent.timeout_s)
        async with self._clients.use(key, lambda: self._new_client(agent, api_key)) as client:
            async for text in self._chunks(client, request, generation):
                yield text

    @staticmethod
    async def _chunks(
        client: anthropic.AsyncAnthropic, request: dict[str, Any], generation: Generation
    ) -> AsyncIterator[str]:
        try:
            events = await client.messages.create(**request)
            async for event in cast(Any, events):
                if event.type == "message_start":
                    generation.usage.prompt_tokens = event.message.usage.input_tokens
                elif event.type == "content_block_delta" and event.delta.type == "text_delta":
                    yield event.delta.text
                elif event.type == "message_delta":
                    generation.usage.finish_reason = event.delta.stop_reason
                    generation.usage.completion_tokens = event.usage.output_tokens
        except anthropic.AnthropicError as exc:
            raise map_error(exc) from exc
