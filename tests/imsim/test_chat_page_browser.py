"""The chat page in headless Chromium: a user types, the bot (a stream peer in this test that
ACKs and drives the card API) answers with an AI card, and the page shows it live, on DingTalk
and on Feishu (a CardKit card streamed and closed); with a second (toy) platform beside
DingTalk, the page lists each platform's chats."""

import asyncio
import json
import re
import socket
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import httpx
import pytest
import uvicorn
from echo_platform import EchoPlatform
from feishu_testkit import OpenApi
from imsim_testkit import CardApi, StreamPeer
from playwright.async_api import Browser, Page, async_playwright, expect

from imsim.app import create_app
from imsim.platforms.dingtalk.platform import DingTalkPlatform
from imsim.settings import AppSpec, Settings

pytestmark = pytest.mark.timeout(60)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# The page polls every 300 ms; a few seconds covers a slow machine.
UI_TIMEOUT_MS = 8000


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            await launched.close()


async def open_chat(browser: Browser, imsim_url: str, **query: str) -> Page:
    page = await browser.new_page()
    await page.goto(f"{imsim_url}/?{urlencode(query)}")
    await expect(page.locator("#status")).to_contain_text("bot online", timeout=UI_TIMEOUT_MS)
    return page


async def type_message(page: Page, text: str) -> None:
    await page.locator("#text").fill(text)
    await page.locator("#text").press("Enter")


async def test_typed_message_becomes_a_live_ai_card(sim, make_app, stream_peer, browser, imsim_url):
    app = await make_app()
    peer: StreamPeer = await stream_peer(app)
    api = await CardApi.for_app(sim, app)
    page = await open_chat(browser, imsim_url, app=app["client_id"], staff="pw-user", nick="Pat", mode="1")

    await type_message(page, "What is imsim?")
    frame = await peer.recv_type("CALLBACK", within=10)
    data = json.loads(frame["data"])
    assert data["text"]["content"] == "What is imsim?"
    assert data["senderStaffId"] == "pw-user" and data["senderNick"] == "Pat"
    assert data["conversationType"] == "1"
    user_row = page.locator(f'.row.me[data-msg-id="{data["msgId"]}"]')
    await expect(user_row.locator(".bubble")).to_have_text("What is imsim?", timeout=UI_TIMEOUT_MS)
    await peer.ack(frame)
    await expect(user_row.locator(".status-tick")).to_have_text("✓ received", timeout=UI_TIMEOUT_MS)
    # The chat list groups chats by platform; this one sits under DingTalk, named by its app.
    dingtalk = page.locator('.platform-group[data-platform="dingtalk"]')
    await expect(dingtalk.locator("h4")).to_contain_text("DingTalk")
    listed = dingtalk.locator(f'.conv[data-id="{data["conversationId"]}"]')
    await expect(listed).to_contain_text("Pat", timeout=UI_TIMEOUT_MS)
    await expect(listed.locator(".app")).to_have_text(app["client_id"])
    await expect(listed).to_have_class(re.compile(r"\bon\b"))

    card = page.locator('.card[data-card-id="answer-1"]')
    assert (await api.create_and_deliver("answer-1", staff_id="pw-user")).status_code == 200
    await expect(card).to_have_attribute("data-state", "thinking", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_contain_text("thinking", timeout=UI_TIMEOUT_MS)

    await api.set_status("answer-1", "2")
    await api.stream("answer-1", "imsim is a ")
    await expect(card).to_have_attribute("data-state", "writing", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_have_text("imsim is a", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".caret")).to_be_visible()

    final = "imsim is a **local** DingTalk simulator."
    await api.stream("answer-1", final, full=True, finalize=True)
    await api.set_status("answer-1", "3", msgContent=final)
    await expect(card).to_have_attribute("data-state", "done", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_have_text(
        "imsim is a local DingTalk simulator.", timeout=UI_TIMEOUT_MS
    )
    await expect(card.locator(".body strong")).to_have_text("local")
    await expect(card.locator(".chip")).to_have_text("Done")
    await expect(card.locator(".caret")).to_have_count(0)


async def test_group_chat_shows_a_failed_card(sim, make_app, stream_peer, browser, imsim_url):
    app = await make_app()
    peer: StreamPeer = await stream_peer(app)
    api = await CardApi.for_app(sim, app)
    page = await open_chat(browser, imsim_url, app=app["client_id"], staff="pw-2", mode="2", group="PW Room")

    await type_message(page, "@bot summarize")
    frame = await peer.recv_type("CALLBACK", within=10)
    await peer.ack(frame)
    data = json.loads(frame["data"])
    assert data["conversationType"] == "2" and data["conversationTitle"] == "PW Room"
    assert data["isInAtList"] is True and data["atUsers"]

    await api.create_and_deliver("broken", group_id=data["conversationId"])
    await api.stream("broken", "Partial answ")
    await api.stream("broken", "", error=True)
    card = page.locator('.card[data-card-id="broken"]')
    await expect(card).to_have_attribute("data-state", "failed", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_have_text("Partial answ")
    await expect(card.locator(".foot")).to_contain_text("could not be completed")
    await expect(page.locator("#chat-title")).to_have_text("PW Room")


async def test_feishu_chat_shows_a_streaming_cardkit_card(
    sim, make_feishu_app, feishu_peer, browser, imsim_url
):
    app = await make_feishu_app(name="Feishu Helper")
    peer = await feishu_peer(app)
    api = await OpenApi.for_app(sim, app)
    page = await open_chat(
        browser,
        imsim_url,
        platform="feishu",
        app=app["app_id"],
        staff="fs-user",
        nick="Fei",
        mode="2",
        group="Lark Room",
    )

    await type_message(page, "what is CardKit?")
    frames, event = await peer.recv_event(within=10)
    message = event["event"]["message"]
    assert json.loads(message["content"]) == {"text": "@_user_1 what is CardKit?"}
    assert message["chat_type"] == "group" and event["event"]["sender"]["sender_id"]["user_id"] == "fs-user"
    await peer.ack(frames[0])
    user_row = page.locator(f'.row.me[data-msg-id="{message["message_id"]}"]')
    await expect(user_row.locator(".status-tick")).to_have_text("✓ received", timeout=UI_TIMEOUT_MS)
    feishu = page.locator('.platform-group[data-platform="feishu"]')
    await expect(feishu.locator("h4")).to_contain_text("Feishu")
    listed = feishu.locator(f'.conv[data-id="{message["chat_id"]}"]')
    await expect(listed).to_contain_text("Lark Room", timeout=UI_TIMEOUT_MS)

    card_id = await api.create_card()
    assert (await api.reply_card(message["message_id"], card_id)).json()["code"] == 0
    card = page.locator(f'.card[data-card-id="{card_id}"]')
    await expect(card).to_have_attribute("data-state", "thinking", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".head")).to_contain_text("Assistant")
    await expect(listed.locator(".p")).to_have_text("[Generating...]", timeout=UI_TIMEOUT_MS)

    await api.stream(card_id, "CardKit streams ", 1)
    await expect(card).to_have_attribute("data-state", "writing", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".caret")).to_be_visible()
    final = "CardKit streams **cards**."
    await api.stream(card_id, final, 2)
    await api.finish(card_id, "CardKit streams cards.", 3)
    await expect(card).to_have_attribute("data-state", "done", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_have_text("CardKit streams cards.", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body strong")).to_have_text("cards")
    await expect(card.locator(".caret")).to_have_count(0)
    await expect(listed.locator(".p")).to_have_text("CardKit streams cards.", timeout=UI_TIMEOUT_MS)


@pytest.fixture
async def two_platform_url() -> AsyncIterator[str]:
    """imsim in this process, serving DingTalk and the toy echo platform side by side."""
    settings = Settings(apps=[AppSpec(client_id="ding-app", client_secret="s")])
    app = create_app(settings, platforms=[DingTalkPlatform, EchoPlatform])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    serving = asyncio.create_task(server.serve())
    while not server.started:  # noqa: ASYNC110 - uvicorn offers a flag, not an event
        await asyncio.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await serving


async def test_chats_are_listed_per_platform(browser, two_platform_url):
    async with httpx.AsyncClient(base_url=two_platform_url) as sim:
        await sim.post("/sim/platforms/echo/apps", json={"app_id": "echo-app", "secret": "s"})
        await sim.post(
            "/sim/platforms/dingtalk/apps/ding-app/messages", json={"text": "hi", "sender_name": "Dee"}
        )
        await sim.post("/sim/platforms/echo/apps/echo-app/messages", json={"text": "ping", "group": "Ops"})
    page = await browser.new_page()
    await page.goto(f"{two_platform_url}/?platform=dingtalk&app=ding-app")

    dingtalk = page.locator('.platform-group[data-platform="dingtalk"]')
    echo = page.locator('.platform-group[data-platform="echo"]')
    await expect(dingtalk.locator("h4")).to_contain_text("DingTalk", timeout=UI_TIMEOUT_MS)
    await expect(echo.locator("h4")).to_contain_text("Echo")
    await expect(dingtalk.locator(".conv")).to_have_count(1)
    await expect(dingtalk.locator(".conv .t")).to_contain_text("Dee")
    await expect(echo.locator(".conv")).to_have_count(1)
    await expect(echo.locator(".conv .t")).to_contain_text("Ops")
    await expect(echo.locator(".conv .p")).to_have_text("echo: ping")

    # Opening the echo chat switches to that platform's app and shows its timeline.
    await echo.locator(".conv").click()
    await expect(page.locator("#app")).to_have_value("echo/echo-app")
    await expect(page.locator("#chat-title")).to_have_text("Ops")
    await expect(page.locator("#timeline .bubble").last).to_have_text("echo: ping", timeout=UI_TIMEOUT_MS)
    await type_message(page, "again")
    await expect(page.locator("#timeline .bubble").last).to_have_text("echo: again", timeout=UI_TIMEOUT_MS)
    await expect(echo.locator(".conv .p")).to_have_text("echo: again", timeout=UI_TIMEOUT_MS)
