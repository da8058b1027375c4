"""The chat page in headless Chromium: a user types, the bot (a stream peer in this test that
ACKs and drives the card API) answers with an AI card, and the page shows it live."""

import json
from collections.abc import AsyncIterator
from urllib.parse import urlencode

import pytest
from imsim_testkit import CardApi, StreamPeer
from playwright.async_api import Browser, Page, async_playwright, expect

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

    card = page.locator('.card[data-out-track-id="answer-1"]')
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
    card = page.locator('.card[data-out-track-id="broken"]')
    await expect(card).to_have_attribute("data-state", "failed", timeout=UI_TIMEOUT_MS)
    await expect(card.locator(".body")).to_have_text("Partial answ")
    await expect(card.locator(".foot")).to_contain_text("could not be completed")
    await expect(page.locator("#chat-title")).to_have_text("PW Room")
