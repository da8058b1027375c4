"""Feishu's API client: tenant tokens (shared per app, refreshed before expiry and when refused)
and Feishu's error codes mapped to the gateway's errors."""

import json
from collections.abc import Callable

import httpx
import pytest

from imgate_common.errors import PlatformError, RateLimited
from imgate_common.platforms import FeishuConfig
from imgate_connector.platform_api import AccessTokens
from imgate_connector.platforms.feishu.openapi import TOKEN_PATH, FeishuOpenApi, _route

DOMAIN = "https://open.feishu.test"
CONFIG = FeishuConfig.model_validate({"app_id": "cli_a", "app_secret": "s3cret"})

Handler = Callable[[httpx.Request], httpx.Response]


class Feishu:
    """Feishu's token and message endpoints as documented, counting what they were asked."""

    def __init__(self) -> None:
        self.tokens_issued = 0
        self.refuse: set[str] = set()  # tokens Feishu no longer takes
        self.answers: list[httpx.Response] = []  # what the next calls answer, in order
        self.seen: list[tuple[str, str | None]] = []  # (path, token) of every call

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            assert json.loads(request.content) == {"app_id": "cli_a", "app_secret": "s3cret"}
            self.tokens_issued += 1
            return httpx.Response(
                200,
                json={
                    "code": 0,
                    "msg": "ok",
                    "tenant_access_token": f"t-{self.tokens_issued}",
                    "expire": 7200,
                },
            )
        token = request.headers.get("authorization", "").removeprefix("Bearer ")
        self.seen.append((request.url.path, token))
        if token in self.refuse:
            return httpx.Response(
                400, json={"code": 99991663, "msg": "Invalid access token for authorization."}
            )
        if self.answers:
            return self.answers.pop(0)
        return httpx.Response(200, json={"code": 0, "msg": "success", "data": {"message_id": "om_1"}})


@pytest.fixture
def feishu() -> Feishu:
    return Feishu()


@pytest.fixture
async def http(feishu: Feishu) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.MockTransport(feishu))


async def test_channels_of_one_app_share_one_token(feishu: Feishu, http: httpx.AsyncClient) -> None:
    tokens = AccessTokens()
    one, two = FeishuOpenApi(http, CONFIG, DOMAIN, tokens), FeishuOpenApi(http, CONFIG, DOMAIN, tokens)
    await one.call("POST", "/open-apis/im/v1/messages/om_0/reply", {})
    await two.call("POST", "/open-apis/im/v1/messages/om_0/reply", {})
    assert feishu.tokens_issued == 1
    assert [token for _, token in feishu.seen] == ["t-1", "t-1"]


async def test_a_refused_token_is_replaced_and_the_call_made_once_more(
    feishu: Feishu, http: httpx.AsyncClient
) -> None:
    api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
    assert await api.tenant_token() == "t-1"
    feishu.refuse.add("t-1")
    data = await api.call("POST", "/open-apis/im/v1/messages/om_0/reply", {})
    assert data["data"]["message_id"] == "om_1"
    assert [token for _, token in feishu.seen] == ["t-1", "t-2"]


async def test_a_token_near_its_expiry_is_replaced_before_it_is_used(
    feishu: Feishu, http: httpx.AsyncClient
) -> None:
    tokens = AccessTokens()
    api = FeishuOpenApi(http, CONFIG, DOMAIN, tokens)
    await api.tenant_token()
    tokens.of(DOMAIN, "cli_a").expires = 0.0  # its margin before expiry is reached
    assert await api.tenant_token() == "t-2"


async def test_a_token_refused_twice_is_an_error_not_a_loop(feishu: Feishu, http: httpx.AsyncClient) -> None:
    api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
    feishu.refuse.update({"t-1", "t-2"})
    with pytest.raises(PlatformError, match="99991663"):
        await api.call("GET", "/open-apis/bot/v3/info")
    assert feishu.tokens_issued == 2


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(
            429,
            headers={"x-ogw-ratelimit-reset": "3"},
            json={"code": 99991400, "msg": "request trigger frequency limit"},
        ),
        httpx.Response(400, json={"code": 99991400, "msg": "request trigger frequency limit"}),
    ],
)
async def test_throttling_is_rate_limited(
    feishu: Feishu, http: httpx.AsyncClient, answer: httpx.Response
) -> None:
    feishu.answers.append(answer)
    api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
    with pytest.raises(RateLimited) as raised:
        await api.call("PUT", "/open-apis/cardkit/v1/cards/7355/elements/answer/content", {})
    assert raised.value.code == "99991400"
    if answer.status_code == 429:
        assert "3 s" in str(raised.value) and raised.value.retry_after_s == 3.0
    else:
        assert raised.value.retry_after_s is None


async def test_other_refusals_keep_feishus_code_and_status(feishu: Feishu, http: httpx.AsyncClient) -> None:
    feishu.answers.append(httpx.Response(400, json={"code": 300317, "msg": "sequence number compare failed"}))
    feishu.answers.append(httpx.Response(503, text="upstream down"))
    api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
    with pytest.raises(PlatformError) as refused:
        await api.call("PUT", "/open-apis/cardkit/v1/cards/7355/elements/answer/content", {})
    assert (refused.value.status, refused.value.code) == (400, "300317")
    with pytest.raises(PlatformError) as down:
        await api.call("PUT", "/open-apis/cardkit/v1/cards/7355/elements/answer/content", {})
    assert down.value.status == 503


async def test_a_code_other_than_zero_is_a_refusal_even_with_http_200(
    feishu: Feishu, http: httpx.AsyncClient
) -> None:
    feishu.answers.append(
        httpx.Response(200, json={"code": 230002, "msg": "Bot/User can NOT be out of the chat."})
    )
    api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
    with pytest.raises(PlatformError, match="230002"):
        await api.call("POST", "/open-apis/im/v1/messages/om_0/reply", {})


def test_metric_labels_carry_no_ids() -> None:
    assert _route("/open-apis/cardkit/v1/cards/7355439/elements/answer/content") == (
        "/open-apis/cardkit/v1/cards/:id/elements/:id/content"
    )
    assert _route("/open-apis/im/v1/messages/om_x/resources/img_y?type=image") == (
        "/open-apis/im/v1/messages/:id/resources/:id"
    )
