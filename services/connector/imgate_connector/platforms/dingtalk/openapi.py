"""DingTalk OpenAPI over httpx: access tokens cached per app, errors mapped to the gateway's own."""

from typing import Any

import httpx
import structlog
from opentelemetry.trace import SpanKind

from imgate_common.errors import PlatformError, RateLimited
from imgate_common.telemetry import fail, tracer
from imgate_connector.platform_api import PLATFORM_API_CALLS, AccessTokens
from imgate_connector.platforms.dingtalk.config import DingTalkConfig
from imgate_connector.platforms.dingtalk.translate import PLATFORM

log = structlog.get_logger()

# Refresh this long before DingTalk's stated expiry (7200 s) so no call goes out with a dying token.
TOKEN_MARGIN_S = 300


class TokenExpired(PlatformError):
    """401 from an OpenAPI call: fetch a new token and try once more."""


class DingTalkOpenApi:
    def __init__(
        self, http: httpx.AsyncClient, config: DingTalkConfig, endpoint: str, tokens: AccessTokens
    ) -> None:
        self._http = http
        self._config = config
        self.endpoint = endpoint
        self._token = tokens.of(endpoint, config.client_id)
        self.calls = 0  # every OpenAPI request this channel made (token fetches included)

    async def access_token(self, *, stale: str | None = None) -> str:
        """The app's token; `stale` is one a call was refused with (401): replace it."""
        return await self._token.get(self._fetch_token, margin_s=TOKEN_MARGIN_S, stale=stale)

    async def _fetch_token(self) -> tuple[str, float]:
        body = {"appKey": self._config.client_id, "appSecret": self._config.client_secret.get_secret_value()}
        data = await self._request("POST", "/v1.0/oauth2/accessToken", body, None)
        ttl = float(data.get("expireIn", 7200))
        log.info("dingtalk_token_refreshed", client_id=self._config.client_id, ttl_s=ttl)
        return str(data["accessToken"]), ttl

    async def call(self, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """One OpenAPI call; a 401 refreshes the token and tries once more."""
        token = await self.access_token()
        try:
            return await self._request(method, path, body, token)
        except TokenExpired:
            token = await self.access_token(stale=token)
            return await self._request(method, path, body, token)

    async def download_url(self, robot_code: str, download_code: str) -> str:
        data = await self.call(
            "POST",
            "/v1.0/robot/messageFiles/download",
            {"robotCode": robot_code, "downloadCode": download_code},
        )
        url = data.get("downloadUrl")
        if not isinstance(url, str) or not url:
            raise PlatformError("messageFiles/download answered without a downloadUrl")
        return url

    async def _request(
        self, method: str, path: str, body: dict[str, Any], token: str | None
    ) -> dict[str, Any]:
        headers = {"x-acs-dingtalk-access-token": token} if token else None
        self.calls += 1
        api = f"{method} {path}"
        with tracer().start_as_current_span(
            f"dingtalk {api}",
            kind=SpanKind.CLIENT,
            attributes={"imgate.platform_api": api},
            record_exception=False,
        ) as span:
            try:
                response = await self._http.request(
                    method, f"{self.endpoint}{path}", json=body, headers=headers
                )
            except httpx.TransportError as exc:
                PLATFORM_API_CALLS.labels(PLATFORM, api, "unreachable").inc()
                fail(span, exc)
                raise PlatformError(f"DingTalk {path} unreachable: {type(exc).__name__}: {exc}") from exc
            PLATFORM_API_CALLS.labels(PLATFORM, api, str(response.status_code)).inc()
            span.set_attribute("http.response.status_code", response.status_code)
            if not response.is_success:
                fail(span, f"HTTP {response.status_code}")
            return check(response)


def check(response: httpx.Response) -> dict[str, Any]:
    """The JSON body of a success; the matching gateway error otherwise."""
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
