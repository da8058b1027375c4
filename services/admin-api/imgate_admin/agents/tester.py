""" "Test this agent": one short prompt to the agent's provider, answered within seconds.

The admin API never loads a local model (llama.cpp belongs to agent-runner), so local agents are
reported as not testable here rather than pretending; OpenAI-compatible agents are called over
HTTP with the agent's own model, prompt and key, streamed, with a short timeout.
"""

import asyncio
import json
import time
from typing import Any
from urllib.parse import urlsplit

import httpx
import structlog

from imgate_admin.agents.schemas import AgentTestResult, Provider
from imgate_common.db.models import Agent
from imgate_common.errors import FailureCategory

log = structlog.get_logger()

# The answer only has to show that the model speaks; a few dozen tokens do that quickly.
TEST_MAX_TOKENS = 64
REPLY_SHOWN = 500

LOCAL_MESSAGE = (
    "Local agents run inside agent-runner, which loads the model; the admin API does not. "
    "To test this agent, send a message to a channel that uses it."
)

STATUS_CATEGORIES = {
    401: FailureCategory.AUTH_FAILED,
    403: FailureCategory.AUTH_FAILED,
    408: FailureCategory.TIMED_OUT,
    429: FailureCategory.RATE_LIMITED,
    413: FailureCategory.CONTEXT_TOO_LONG,
}


def _where(base_url: str) -> str:
    # Host and port only: a base URL may carry credentials in its user-info or query.
    parts = urlsplit(base_url)
    return parts.hostname + (f":{parts.port}" if parts.port else "") if parts.hostname else "the provider"


class AgentTester:
    def __init__(self, http: httpx.AsyncClient, timeout_s: float) -> None:
        self._http = http
        self._timeout_s = timeout_s

    async def test(self, agent: Agent, api_key: str | None, prompt: str) -> AgentTestResult:
        if agent.provider == Provider.LOCAL:
            return AgentTestResult(result="skipped", message=LOCAL_MESSAGE)
        if agent.provider != Provider.OPENAI or not agent.base_url:
            return AgentTestResult(
                result="skipped",
                message=f"the admin API cannot test provider {agent.provider!r}; send a message instead",
            )
        timeout = min(self._timeout_s, agent.timeout_s)
        started = time.monotonic()
        try:
            async with asyncio.timeout(timeout):
                reply = await self._openai(agent, api_key, prompt)
        except _Failed as exc:
            return self._failed(exc.category, exc.message, started)
        except TimeoutError:
            return self._failed(FailureCategory.TIMED_OUT, f"no answer within {timeout:g} s", started)
        except httpx.TimeoutException:
            return self._failed(FailureCategory.TIMED_OUT, f"no answer within {timeout:g} s", started)
        except httpx.HTTPError as exc:
            where = _where(agent.base_url)
            return self._failed(
                FailureCategory.PROVIDER_ERROR, f"could not reach {where} ({type(exc).__name__})", started
            )
        latency_ms = int((time.monotonic() - started) * 1000)
        if not reply.strip():
            return self._failed(FailureCategory.PROVIDER_ERROR, "the model answered with no text", started)
        log.info("agent_test_passed", agent_id=agent.id, latency_ms=latency_ms)
        return AgentTestResult(
            result="passed",
            reply=reply[:REPLY_SHOWN],
            latency_ms=latency_ms,
            message=f"{agent.model} answered in {latency_ms} ms",
        )

    def _failed(self, category: FailureCategory, message: str, started: float) -> AgentTestResult:
        latency_ms = int((time.monotonic() - started) * 1000)
        log.info("agent_test_failed", category=str(category), latency_ms=latency_ms)
        return AgentTestResult(
            result="failed", latency_ms=latency_ms, category=str(category), message=message
        )

    async def _openai(self, agent: Agent, api_key: str | None, prompt: str) -> str:
        assert agent.base_url is not None
        messages: list[dict[str, str]] = []
        if agent.system_prompt:
            messages.append({"role": "system", "content": agent.system_prompt})
        messages.append({"role": "user", "content": prompt})
        body: dict[str, Any] = {
            "model": agent.model,
            "messages": messages,
            "stream": True,
            "temperature": agent.temperature,
            "max_tokens": min(agent.max_output_tokens, TEST_MAX_TOKENS),
        }
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        url = agent.base_url.rstrip("/") + "/chat/completions"
        async with self._http.stream("POST", url, json=body, headers=headers) as response:
            if response.status_code != 200:
                category = STATUS_CATEGORIES.get(response.status_code, FailureCategory.PROVIDER_ERROR)
                # The provider's body is not shown: some echo the key they refused.
                raise _Failed(category, f"{_where(agent.base_url)} answered HTTP {response.status_code}")
            if response.headers.get("content-type", "").startswith("text/event-stream"):
                return await _read_stream(response)
            return _read_json(await response.aread())


class _Failed(Exception):
    def __init__(self, category: FailureCategory, message: str) -> None:
        super().__init__(message)
        self.category = category
        self.message = message


def _content(choice: Any, key: str) -> str:
    if not isinstance(choice, dict):
        return ""
    part = choice.get(key)
    text = part.get("content") if isinstance(part, dict) else None
    return text if isinstance(text, str) else ""


async def _read_stream(response: httpx.Response) -> str:
    pieces: list[str] = []
    async for line in response.aiter_lines():
        if not line.startswith("data:"):
            continue
        data = line[5:].strip()
        if data == "[DONE]":
            break
        try:
            chunk = json.loads(data)
        except json.JSONDecodeError:
            raise _Failed(FailureCategory.PROVIDER_ERROR, "the provider sent an unreadable stream") from None
        choices = chunk.get("choices") if isinstance(chunk, dict) else None
        if choices:
            pieces.append(_content(choices[0], "delta"))
        if sum(map(len, pieces)) > REPLY_SHOWN:
            break  # enough to show; no need to wait for the rest
    return "".join(pieces)


def _read_json(raw: bytes) -> str:
    try:
        body = json.loads(raw)
        return _content(body["choices"][0], "message")
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Failed(FailureCategory.PROVIDER_ERROR, "the provider sent an unreadable answer") from None
