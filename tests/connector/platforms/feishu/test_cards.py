"""Feishu's reply surface: the CardKit calls a streaming card makes, as Feishu documents them,
and the plain replies."""

import asyncio
import json
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis

from imgate_common.errors import PlatformError
from imgate_common.messages import ConversationType, ReplyTarget
from imgate_common.platforms import FeishuConfig, FeishuReplyData
from imgate_connector import cardcalls
from imgate_connector.health import ChannelHealth
from imgate_connector.platform_api import AccessTokens, CardExists, ConnectorSettings, app_scheduler
from imgate_connector.platforms.feishu.cards import (
    CARD_CALLS,
    ELEMENT_ID,
    CardRecords,
    FeishuReplySurface,
    reply_uuid,
    summary_of,
)
from imgate_connector.platforms.feishu.openapi import TOKEN_PATH, FeishuOpenApi
from imgate_connector.resources import ConnectorResources

DOMAIN = "https://open.feishu.test"
CONFIG = FeishuConfig.model_validate({"app_id": "cli_cards", "app_secret": "s"})


class CardKit:
    """Feishu's card and message endpoints as documented: records every call, makes entities."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, dict[str, Any]]] = []
        self.entities = 0
        self.fail_replies = 0  # the next replies answer 500
        self.throttle: list[str] = []  # the next CardKit calls answer 429 with this reset header

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path == TOKEN_PATH:
            return httpx.Response(200, json={"code": 0, "tenant_access_token": "t-1", "expire": 7200})
        body = json.loads(request.content) if request.content else {}
        self.calls.append((request.method, request.url.path, body))
        if self.throttle and "/cardkit/" in request.url.path:
            reset = self.throttle.pop(0)
            return httpx.Response(
                429,
                headers={"x-ogw-ratelimit-reset": reset},
                json={"code": 99991400, "msg": "request trigger frequency limit"},
            )
        if request.url.path == "/open-apis/cardkit/v1/cards" and request.method == "POST":
            self.entities += 1
            return httpx.Response(
                200, json={"code": 0, "data": {"card_id": f"73554391974282{self.entities}"}}
            )
        if request.url.path.endswith("/reply") and self.fail_replies:
            self.fail_replies -= 1
            return httpx.Response(500, json={"code": 1, "msg": "internal"})
        return httpx.Response(200, json={"code": 0, "data": {"message_id": "om_reply"}})

    def of(self, method: str, path_end: str) -> list[dict[str, Any]]:
        return [b for m, p, b in self.calls if m == method and p.endswith(path_end)]


@pytest.fixture
def cardkit() -> CardKit:
    return CardKit()


Surfaces = Any


@pytest.fixture
async def surfaces(cardkit: CardKit, redis_client: Redis, key_prefix: str) -> Any:
    """Reply surfaces of one app, as separate replicas would have them."""
    http = httpx.AsyncClient(transport=httpx.MockTransport(cardkit))
    resources = ConnectorResources(http, redis_client, key_prefix)
    settings = ConnectorSettings(language="en", card_qps=50)

    def make() -> FeishuReplySurface:
        api = FeishuOpenApi(http, CONFIG, DOMAIN, AccessTokens())
        scheduler = app_scheduler(resources, settings, "feishu:cli_cards", CARD_CALLS)
        records = CardRecords(redis_client, key_prefix, CONFIG.app_id)
        return FeishuReplySurface(api, records, scheduler, ChannelHealth(channel_id=1, owner="t"), settings)

    yield make
    await http.aclose()


def target(group: bool = False, thread: bool = False) -> ReplyTarget:
    return ReplyTarget(
        platform="feishu",
        channel_id=1,
        conversation_id="oc_chat",
        conversation_type=ConversationType.GROUP if group else ConversationType.SINGLE,
        sender_id="ou_pat",
        platform_data=FeishuReplyData(
            chat_type="group" if group else "p2p", thread_id="omt_1" if thread else None
        ),
        inbound_message_id="om_question",
    )


def card_of(body: dict[str, Any]) -> dict[str, Any]:
    data = body["data"] if "data" in body else body["card"]["data"]
    return json.loads(data)  # type: ignore[no-any-return]


async def test_a_card_opens_thinking_as_the_reply_to_the_message(cardkit: CardKit, surfaces: Any) -> None:
    await surfaces().open_card("run-1", target())
    [create] = cardkit.of("POST", "/cardkit/v1/cards")
    card = card_of(create)
    assert create["type"] == "card_json"
    assert card["schema"] == "2.0" and card["config"]["streaming_mode"] is True
    assert card["body"]["elements"] == [{"tag": "markdown", "element_id": ELEMENT_ID, "content": "Thinking…"}]
    [reply] = cardkit.of("POST", "/im/v1/messages/om_question/reply")
    assert reply["msg_type"] == "interactive"
    assert json.loads(reply["content"]) == {"type": "card", "data": {"card_id": "73554391974282" + "1"}}
    assert reply["uuid"] == reply_uuid("run-1") != reply_uuid("run-2")


async def test_a_card_that_was_opened_is_not_opened_again(cardkit: CardKit, surfaces: Any) -> None:
    await surfaces().open_card("run-1", target())
    with pytest.raises(CardExists):
        await surfaces().open_card("run-1", target())  # another replica, say
    assert cardkit.entities == 1 and len(cardkit.of("POST", "/reply")) == 1


async def test_an_open_tried_again_reuses_its_entity_and_reply_uuid(cardkit: CardKit, surfaces: Any) -> None:
    cardkit.fail_replies = 10  # the reply keeps failing: the open gives up
    with pytest.raises(PlatformError):
        await surfaces().open_card("run-1", target())
    cardkit.fail_replies = 0
    await surfaces().open_card("run-1", target())
    assert cardkit.entities == 1
    assert {r["uuid"] for r in cardkit.of("POST", "/reply")} == {reply_uuid("run-1")}


async def test_updates_carry_the_whole_text_and_a_growing_sequence_across_replicas(
    cardkit: CardKit, surfaces: Any
) -> None:
    first, second = surfaces(), surfaces()
    await first.open_card("run-1", target())
    assert await first.update_card("run-1", "Hello")
    assert await second.update_card("run-1", lambda: "Hello, world")  # the channel moved
    await second.close_card("run-1", "Hello, world. Done.", failed=False)
    updates = cardkit.of("PUT", f"/cards/735543919742821/elements/{ELEMENT_ID}/content")
    assert [(u["content"], u["sequence"]) for u in updates] == [("Hello", 1), ("Hello, world", 2)]
    [final] = cardkit.of("PUT", "/cardkit/v1/cards/735543919742821")
    assert final["sequence"] == 3
    card = card_of(final)
    assert card["config"]["streaming_mode"] is False
    assert card["config"]["summary"] == {"content": "Hello, world. Done."}
    assert card["body"]["elements"][0]["content"] == "Hello, world. Done."


async def test_a_card_never_opened_is_not_updated(cardkit: CardKit, surfaces: Any) -> None:
    assert await surfaces().update_card("ghost", "text") is False
    assert cardkit.of("PUT", "/content") == []


async def test_a_continuation_is_a_finished_card_posted_once(cardkit: CardKit, surfaces: Any) -> None:
    surface = surfaces()
    await surface.post_card("run-1-2", target(), "the rest")
    await surface.post_card("run-1-2", target(), "the rest")  # a redelivered final
    [create] = cardkit.of("POST", "/cardkit/v1/cards")
    assert card_of(create)["config"]["streaming_mode"] is False
    assert len(cardkit.of("POST", "/reply")) == 1


async def test_a_throttled_call_that_must_happen_waits_until_feishus_window_reopens(
    cardkit: CardKit, surfaces: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Feishu says when its rate window reopens (`x-ogw-ratelimit-reset`): the retry of a final
    waits that long rather than the first back-off step (a quarter of a second)."""
    surface = surfaces()
    await surface.open_card("run-9", target())
    waited: list[float] = []
    sleep = asyncio.sleep

    async def recorded(delay: float, *args: Any) -> Any:
        waited.append(delay)
        return await sleep(0)

    monkeypatch.setattr(cardcalls.asyncio, "sleep", recorded)
    cardkit.throttle = ["2"]
    await surface.close_card("run-9", "the answer", failed=False)
    assert any(delay >= 2 for delay in waited), waited
    assert cardkit.of("PUT", "/cards/735543919742821")[-1]["sequence"] >= 1  # the close went out


async def test_plain_replies_mention_the_sender_in_a_group_and_stay_in_its_thread(
    cardkit: CardKit, surfaces: Any
) -> None:
    surface = surfaces()
    await surface.send_text(target(), "hi")
    await surface.send_text(target(group=True, thread=True), "**hi**", markdown=True)
    single, group = cardkit.of("POST", "/im/v1/messages/om_question/reply")
    assert (single["msg_type"], json.loads(single["content"])) == ("text", {"text": "hi"})
    assert "reply_in_thread" not in single
    assert group["msg_type"] == "post" and group["reply_in_thread"] is True
    [[element]] = json.loads(group["content"])["zh_cn"]["content"]
    assert element == {"tag": "md", "text": '<at user_id="ou_pat"></at> **hi**'}


def test_the_summary_is_one_short_line() -> None:
    assert summary_of("line one\n\nline   two") == "line one line two"
    assert len(summary_of("x" * 500)) == 60
