"""The console's dead-letters page in headless Chromium: a letter is listed with its reason, and
replaying it (after the confirmation) removes it and audits it."""

import asyncio
import base64
from concurrent.futures import ThreadPoolExecutor

import nats
import pytest
from playwright.sync_api import Page, expect

from imgate_common.bus import DEAD_LETTERS_STREAM, INBOUND_STREAM, dead_letter_subject
from imgate_common.messages import DeadLetter

from .conftest import LiveStack
from .test_console_browser import _confirm, _sign_in, browser, page  # noqa: F401 (fixtures)

pytestmark = pytest.mark.e2e


async def _file(nats_url: str) -> None:
    letter = DeadLetter(
        consumer="router-p3",
        stream=INBOUND_STREAM,
        # A channel no database holds: the replayed message is dropped by the live router.
        subject="im.inbound.dingtalk.2147483000.3",
        headers={},
        data_b64=base64.b64encode(b'{"text": "hello from the page test"}').decode(),
        reason="LDAP user_filter '(uid={uid})' cannot be filled",
        error_type="MapperMisconfigured",
        category="misconfigured",
        permanent=True,
        deliveries=1,
        channel_id=2147483000,
        run_id="page-test-run",
    )
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(
            dead_letter_subject("router-p3"), letter.model_dump_json().encode(), stream=DEAD_LETTERS_STREAM
        )
    finally:
        await nc.close()


def test_an_operator_replays_a_dead_letter(page: Page, live: LiveStack) -> None:  # noqa: F811
    # Playwright's sync API runs an event loop in this thread: publish from another.
    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, _file(live.stack.env["NATS_URL"])).result()
    _sign_in(page)
    page.click('[data-nav="dead-letters"]')
    expect(page.locator("h1")).to_have_text("Dead letters")
    row = page.locator("#dead-letters tbody tr", has_text="hello from the page test")
    expect(row).to_contain_text("misconfigured")
    expect(row).to_contain_text("(uid={uid})")
    row.get_by_role("button", name="Replay").click()
    _confirm(page)
    expect(page.locator("#flash")).to_contain_text("replayed")
    expect(row).to_have_count(0)
    with live.api() as api:
        actions = [e["action"] for e in api.get("/audit", params={"action": "dead_letter.replay"}).json()]
    assert actions == ["dead_letter.replay"]
