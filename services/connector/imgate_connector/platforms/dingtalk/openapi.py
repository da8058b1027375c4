"""DingTalk OpenAPI over httpx: access token kept fresh, errors mapped to the gateway's own."""

import asyncio
import time
from typing import Any

import httpx
import structlog
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from imgate_common.errors import PlatformError, RateLimited
from imgate_connector.platforms.dingtalk.config import DingTalkConfig

log = structlog.get_logger()

# Refresh this long before DingTalk's stated expiry so no call goes out with a dying token.
TOKEN_MARGIN_S = 300


class TokenExpired(PlatformError):
    """401 from an OpenAPI call: fetch a new token and try once more."""


class DingTalkOpenApi:
    def __init__(self, http: httpx.AsyncClient, config: DingTalkConfig, endpoint: str) -> None:
        self._http = http
        self._config = config
        self.endpoint = endpoint
        self._token: str | None = None
        self._token_expires = 0.0
        self._token_lock = asyncio.Lock()

    async def access_token(self, *, force: bool = False) -> str:
        async with self._token_lock:
            if force or self._token is None or time.monotonic() >= self._token_expires:
                body = {
                    "appKey": self._config.client_id,
                    "appSecret": self._config.client_secret.get_secret_value(),
                }
                response = await self._http.post(f"{self.endpoint}/v1.0/oauth2/accessToken", json=body)
                data = self._check(response)
                self._token = str(data["accessToken"])
                ttl = float(data.get("expireIn", 7200))
                self._token_expires = time.monotonic() + max(ttl - TOKEN_MARGIN_S, ttl / 2)
            return self._token

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One OpenAPI call; a 401 refreshes the token and retries once."""
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type(TokenExpired),
            stop=stop_after_attempt(2),
            wait=wait_exponential_jitter(multiplier=0.05, max=0.5),
            reraise=True,
        ):
            with attempt:
                force = attempt.retry_state.attempt_number > 1
                token = await self.access_token(force=force)
                response = await self._http.request(
                    method,
                    f"{self.endpoint}{path}",
                    json=body,
                    headers={"x-acs-dingtalk-access-token": token},
                )
                return self._check(response)
        raise AssertionError("unreachable")

    def _check(self, response: httpx.Response) -> dict[str, Any]:
        try:
            data = response.json() if response.content else {}
        except ValueError:
            data = {"message": response.text[:200]}
        if response.is_success:
            return data if isinstance(data, dict) else {"result": data}
        code = str(data.get("code", "")) if isinstance(data, dict) else ""
        message = str(data.get("message", "")) if isinstance(data, dict) else ""
        text = f"DingTalk {response.status_code} {code}: {message}".strip()
        if response.status_code == 401:
            raise TokenExpired(text, response.status_code, code)
        if response.status_code == 429 or (response.status_code == 403 and "QpsLimit" in code):
            raise RateLimited(text, response.status_code, code)
        raise PlatformError(text, response.status_code, code)
