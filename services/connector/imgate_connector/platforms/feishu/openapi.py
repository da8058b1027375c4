"""Feishu's open platform over httpx: tenant tokens cached per app, errors mapped to the gateway's.

Feishu answers most refusals with HTTP 200 or 400 and its own `code`; 0 is success. A token it
no longer takes (99991661, 99991663) is replaced and the call tried once more; throttling (HTTP
429 or code 99991400) is `RateLimited`, its `x-ogw-ratelimit-reset` (seconds until the window
reopens) named in the error.
"""

from typing import Any

import httpx
import structlog
from opentelemetry.trace import SpanKind

from imgate_common.errors import PlatformError, RateLimited
from imgate_common.telemetry import fail, tracer
from imgate_connector.platform_api import PLATFORM_API_CALLS, AccessTokens
from imgate_connector.platforms.feishu.config import RATE_LIMITED_CODE, TOKEN_INVALID_CODES, FeishuConfig
from imgate_connector.platforms.feishu.translate import PLATFORM

log = structlog.get_logger()

TOKEN_PATH = "/open-apis/auth/v3/tenant_access_token/internal"
# Refresh this long before the stated expiry (7200 s): no call goes out with a dying token.
# Feishu hands out a new token once the old one has less than 30 min left, so this is a new one.
TOKEN_MARGIN_S = 300


class TokenExpired(PlatformError):
    """Feishu no longer takes the token: fetch a new one and try once more."""


class FeishuOpenApi:
    def __init__(
        self, http: httpx.AsyncClient, config: FeishuConfig, domain: str, tokens: AccessTokens
    ) -> None:
        self._http = http
        self._config = config
        self.domain = domain
        self._token = tokens.of(domain, config.app_id)
        self.calls = 0  # every request this channel made (token fetches included)

    def credentials(self) -> dict[str, str]:
        return {"app_id": self._config.app_id, "app_secret": self._config.app_secret.get_secret_value()}

    async def tenant_token(self, *, stale: str | None = None) -> str:
        """The app's tenant_access_token; `stale` is one a call was refused with: replace it."""
        return await self._token.get(self._fetch_token, margin_s=TOKEN_MARGIN_S, stale=stale)

    async def _fetch_token(self) -> tuple[str, float]:
        data = await self._request("POST", TOKEN_PATH, self.credentials(), None)
        token = data.get("tenant_access_token")
        if not isinstance(token, str) or not token:
            raise PlatformError("tenant_access_token answered without a token")
        ttl = float(data.get("expire") or 7200)
        log.info("feishu_token_refreshed", app_id=self._config.app_id, ttl_s=ttl)
        return token, ttl

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, params: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """One call with the tenant token; a refused token is replaced and the call tried once more."""
        token = await self.tenant_token()
        try:
            return await self._request(method, path, body, token, params)
        except TokenExpired:
            token = await self.tenant_token(stale=token)
            return await self._request(method, path, body, token, params)

    async def _request(
        self,
        method: str,
        path: str,
        body: dict[str, Any] | None,
        token: str | None,
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {token}"} if token else None
        self.calls += 1
        api = f"{method} {_route(path)}"
        with tracer().start_as_current_span(
            f"feishu {api}",
            kind=SpanKind.CLIENT,
            attributes={"imgate.platform_api": api},
            record_exception=False,
        ) as span:
            try:
                response = await self._http.request(
                    method, f"{self.domain}{path}", json=body, headers=headers, params=params
                )
            except httpx.TransportError as exc:
                PLATFORM_API_CALLS.labels(PLATFORM, api, "unreachable").inc()
                fail(span, exc)
                raise PlatformError(
                    f"Feishu {_route(path)} unreachable: {type(exc).__name__}: {exc}"
                ) from exc
            PLATFORM_API_CALLS.labels(PLATFORM, api, str(response.status_code)).inc()
            span.set_attribute("http.response.status_code", response.status_code)
            try:
                return check(response)
            except PlatformError as exc:
                fail(span, str(exc))
                raise


# Path segments after which Feishu puts an id (of a message, card, element or file).
_ID_AFTER = frozenset({"messages", "cards", "elements", "resources"})


def _route(path: str) -> str:
    """A path as a metric label, its ids replaced: senders and answers cannot grow the label set."""
    parts = path.split("?")[0].split("/")
    return "/".join(":id" if i and parts[i - 1] in _ID_AFTER else p for i, p in enumerate(parts))


def check(response: httpx.Response) -> dict[str, Any]:
    """The body of a success (`code` 0); the matching gateway error otherwise."""
    try:
        data = response.json() if response.content else {}
    except ValueError:
        data = {"msg": response.text[:200]}
    if not isinstance(data, dict):
        data = {"data": data}
    raw_code = data.get("code", 0 if response.is_success else None)
    code = raw_code if isinstance(raw_code, int) and not isinstance(raw_code, bool) else None
    if response.is_success and code == 0:
        return data
    message = str(data.get("msg") or data.get("message") or "")
    text = f"Feishu {response.status_code} {code if code is not None else ''}: {message}".strip()
    code_str = None if code is None else str(code)
    if code in TOKEN_INVALID_CODES:
        raise TokenExpired(text, response.status_code, code_str)
    if response.status_code == 429 or code == RATE_LIMITED_CODE:
        reset = _seconds(response.headers.get("x-ogw-ratelimit-reset"))
        raise RateLimited(
            f"{text} (window reopens in {reset:g} s)" if reset is not None else text,
            response.status_code,
            code_str,
            retry_after_s=reset,
        )
    raise PlatformError(text, response.status_code, code_str)


def _seconds(value: str | None) -> float | None:
    """A header's count of seconds; None when absent or not a sane number."""
    try:
        seconds = float(value) if value is not None else None
    except ValueError:
        return None
    return seconds if seconds is not None and 0 <= seconds < 3600 else None
