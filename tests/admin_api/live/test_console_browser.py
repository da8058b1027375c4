"""The web console in headless Chromium: log in, create a channel against imsim, watch it turn
green, disable it (grey), enable and restart it, edit it keeping its secret, delete it."""

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Locator, Page, expect, sync_playwright

from .conftest import ADMIN_TOKEN, LiveStack

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("IMGATE_CHROMIUM", "/usr/bin/chromium")
# Control requests make changes land within 2 s; the page polls every second on top of that.
LANDS_S = 4


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"no Chromium at {CHROMIUM} (apt-get install chromium; make test does it)")
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture
def page(browser: Browser, live: LiveStack, tmp_path: Path) -> Iterator[Page]:
    context = browser.new_context(base_url=live.admin)
    opened = context.new_page()
    errors: list[str] = []
    opened.on("pageerror", lambda exc: errors.append(str(exc)))
    # Chromium logs every 4xx fetch; those the page handles (a wrong token, a refused form) are
    # expected. Script errors and 5xx answers are not.
    handled = "the server responded with a status of 4"
    opened.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" and handled not in msg.text else None,
    )
    outside: list[str] = []
    opened.on("request", lambda r: outside.append(r.url) if not r.url.startswith(live.admin) else None)
    yield opened
    opened.screenshot(path=str(tmp_path / "last.png"), full_page=True)
    context.close()
    assert not errors, errors
    assert not outside, f"the console fetched from elsewhere: {outside}"


def _row(page: Page, name: str) -> Locator:
    return page.locator(f'tr[data-channel="{name}"]')


def _expect_state(indicator: Locator, state: str, emoji: str) -> None:
    expect(indicator).to_have_attribute("data-state", state, timeout=LANDS_S * 1000)
    expect(indicator).to_have_text(state)
    expect(indicator).to_have_attribute("title", emoji)


def _confirm(page: Page) -> None:
    dialog = page.locator("dialog#confirm")
    expect(dialog).to_be_visible()
    dialog.get_by_test_id("confirm-yes").click()


def test_operator_manages_a_channel_in_the_console(page: Page, live: LiveStack, tmp_path: Path) -> None:
    client_id, secret = f"console-{uuid.uuid4().hex[:6]}", "console-secret-" + uuid.uuid4().hex
    live.sim_app(client_id, secret)
    name = f"console-bot-{client_id[-6:]}"

    page.goto("/")
    page.fill("#token", "not-the-token")
    page.click("form#login button[type=submit]")
    expect(page.locator("#login-error")).to_have_text("That token was refused.")
    page.fill("#token", ADMIN_TOKEN)
    page.click("form#login button[type=submit]")
    expect(page.locator("h1")).to_have_text("Channels")

    page.click("#new-channel")
    form = page.locator("form#channel-form")
    form.locator('[name="name"]').fill(name)
    form.locator('[name="config.client_id"]').fill(client_id)
    form.locator('[name="config.client_secret"]').fill(secret)
    form.locator('[name="config.openapi_endpoint"]').fill(live.imsim)
    form.locator("#save-channel").click()

    row = _row(page, name)
    indicator = row.locator(".indicator")
    _expect_state(indicator, "connected", "🟢")
    assert live.connections(client_id) == 1
    expect(row.locator("td").nth(2)).not_to_have_text("–")  # uptime shows
    page.screenshot(path=str(tmp_path / "green.png"), full_page=True)

    row.locator('[data-action="disable"]').click()
    _confirm(page)
    _expect_state(indicator, "disabled", "⚪")
    page.screenshot(path=str(tmp_path / "disabled.png"), full_page=True)
    live.wait(lambda: live.connections(client_id) == 0, 2, "the disabled channel's connection closing")

    row.locator('[data-action="enable"]').click()
    _expect_state(indicator, "connected", "🟢")
    before = {c["connection_id"] for c in _connections(live, client_id) if c["open"]}

    row.locator('[data-action="restart"]').click()
    _confirm(page)
    live.wait(
        lambda: {c["connection_id"] for c in _connections(live, client_id) if c["open"]} - before != set(),
        LANDS_S,
        "a new connection after the restart",
    )
    _expect_state(indicator, "connected", "🟢")

    # Edit: the secret field is blank with a "leave blank to keep" placeholder; saving keeps it.
    row.locator("a", has_text="Edit").click()
    secret_input = page.locator('[name="config.client_secret"]')
    expect(secret_input).to_have_value("")
    expect(secret_input).to_have_attribute("placeholder", "•••••• stored — leave blank to keep")
    assert secret not in page.content()
    page.screenshot(path=str(tmp_path / "edit.png"), full_page=True)
    page.fill('[name="card_qps"]', "12")
    page.click("form#channel-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Channels")
    _expect_state(_row(page, name).locator(".indicator"), "connected", "🟢")
    assert live.connections(client_id) == 1

    _row(page, name).locator('[data-action="delete"]').click()
    _confirm(page)
    expect(_row(page, name)).to_have_count(0, timeout=LANDS_S * 1000)
    live.wait(lambda: live.connections(client_id) == 0, 2, "the deleted channel's connection closing")
    page.screenshot(path=str(tmp_path / "deleted.png"), full_page=True)


def test_operator_creates_and_tests_an_agent(page: Page, live: LiveStack) -> None:
    name = f"console-agent-{uuid.uuid4().hex[:6]}"
    key = "sk-console-" + uuid.uuid4().hex
    _sign_in(page)
    page.click('[data-nav="agents"]')
    page.click("text=New agent")
    form = page.locator("form#agent-form")
    form.locator('[name="name"]').fill(name)
    form.locator('[name="provider"]').select_option("openai")
    form.locator('[name="model"]').fill("scripted")
    form.locator('[name="base_url"]').fill(live.model_url)
    form.locator('[name="api_key"]').fill(key)
    form.locator("button[type=submit]").click()
    row = page.locator(f'tr[data-agent="{name}"]')
    expect(row).to_contain_text("***")
    row.locator('[data-action="test"]').click()
    expect(page.locator("#agent-test-result")).to_contain_text(f"{name}: passed", timeout=10_000)
    assert key not in page.content()

    row.locator("a", has_text="Edit").click()
    expect(page.locator('[name="api_key"]')).to_have_attribute(
        "placeholder", "•••••• stored — leave blank to keep"
    )
    page.fill('[name="temperature"]', "5")
    page.click("form#agent-form button[type=submit]")
    expect(page.locator("form#agent-form .field-error", has_text="less than or equal to 2")).to_have_count(1)
    expect(page.locator('[name="temperature"]')).to_have_class("invalid")
    page.fill('[name="temperature"]', "0.5")
    page.click("form#agent-form button[type=submit]")
    expect(page.locator("h1")).to_have_text("Agents")
    page.locator(f'tr[data-agent="{name}"] [data-action="delete"]').click()
    _confirm(page)
    expect(page.locator(f'tr[data-agent="{name}"]')).to_have_count(0)


def _sign_in(page: Page) -> None:
    page.goto("/console/")
    page.fill("#token", ADMIN_TOKEN)
    page.click("form#login button[type=submit]")
    expect(page.locator("h1")).to_have_text("Channels")


def test_every_console_page_renders(page: Page, live: LiveStack) -> None:
    _sign_in(page)
    for nav, heading in [
        ("agents", "Agents"),
        ("users", "Users"),
        ("conversations", "Conversations"),
        ("tokens", "API tokens"),
        ("audit", "Audit log"),
    ]:
        page.click(f'[data-nav="{nav}"]')
        expect(page.locator("h1")).to_have_text(heading)
    page.click("#sign-out")
    expect(page.locator("form#login")).to_be_visible()


def _connections(live: LiveStack, client_id: str) -> list[dict[str, object]]:
    import httpx

    return list(httpx.get(f"{live.imsim}/sim/apps/{client_id}/connections", timeout=5).json())


def _error_under(page: Page, name: str) -> Locator:
    return page.locator(f'.field:has([name="{name}"]) .field-error')


def test_a_moved_destination_asks_for_the_secret_again(page: Page, live: LiveStack) -> None:
    """Invariant 8 in the console: a changed base URL, endpoint or directory URL refuses the
    stored secret, says so under the secret's field, and saves once the secret is typed in."""
    suffix = uuid.uuid4().hex[:6]
    with live.api() as api:
        agent = api.post(
            "/agents",
            json={
                "name": f"moved-agent-{suffix}",
                "provider": "openai",
                "model": "scripted",
                "base_url": live.model_url,
                "api_key": "sk-console-first",
            },
        ).json()
        channel = api.post(
            "/channels",
            json={
                "name": f"moved-bot-{suffix}",
                "platform": "dingtalk",
                "config": {
                    "client_id": f"moved-{suffix}",
                    "client_secret": "first",
                    "openapi_endpoint": live.imsim,
                },
                "user_mapping": {
                    "mode": "ldap",
                    "url": "ldap://127.0.0.1:389",
                    "bind_dn": "cn=imgate",
                    "base_dn": "dc=example",
                    "bind_password": "first-bind",
                },
                "enabled": False,
            },
        ).json()
    _sign_in(page)

    page.goto(f"/console/#/agents/{agent['id']}/edit")
    form = page.locator("form#agent-form")
    expect(form.locator(".field:has([name=base_url]) .hint")).to_contain_text(
        "needs the secrets entered again"
    )
    form.locator('[name="base_url"]').fill("http://127.0.0.1:9/v1")
    form.locator("button[type=submit]").click()
    expect(_error_under(page, "api_key")).to_have_text(
        "base_url changed: enter api_key again (a stored secret is only sent where it was configured to go)"
    )
    expect(form.locator('[name="api_key"]')).to_have_class("invalid")
    expect(form.locator('[name="api_key"]')).to_be_focused()
    with live.api() as api:
        assert api.get(f"/agents/{agent['id']}").json()["base_url"] == live.model_url
    form.locator('[name="api_key"]').fill("sk-console-second")
    form.locator("button[type=submit]").click()
    expect(page.locator("h1")).to_have_text("Agents")
    with live.api() as api:
        assert api.get(f"/agents/{agent['id']}").json()["base_url"] == "http://127.0.0.1:9/v1"

    page.goto(f"/console/#/channels/{channel['id']}/edit")
    form = page.locator("form#channel-form")
    expect(form.locator(".field:has([name='user_mapping.url']) .hint")).to_contain_text("entered again")
    form.locator('[name="config.openapi_endpoint"]').fill("http://127.0.0.1:9")
    form.locator('[name="user_mapping.url"]').fill("ldap://127.0.0.2:389")
    form.locator("#save-channel").click()
    expect(_error_under(page, "config.client_secret")).to_contain_text("openapi_endpoint changed")
    expect(_error_under(page, "user_mapping.bind_password")).to_contain_text(
        "url changed: enter bind_password"
    )
    expect(form.locator('[name="config.client_secret"]')).to_be_focused()
    form.locator('[name="config.client_secret"]').fill("second")
    form.locator('[name="user_mapping.bind_password"]').fill("second-bind")
    form.locator("#save-channel").click()
    expect(page.locator("h1")).to_have_text("Channels")
    with live.api() as api:
        saved = api.get(f"/channels/{channel['id']}").json()
    assert (saved["config"]["openapi_endpoint"], saved["user_mapping"]["url"]) == (
        "http://127.0.0.1:9",
        "ldap://127.0.0.2:389",
    )


def test_an_identity_is_linked_on_a_platform_picked_from_the_list(page: Page, live: LiveStack) -> None:
    """The identity form offers the registered platforms, not a free-text name to misspell."""
    suffix = uuid.uuid4().hex[:6]
    with live.api() as api:
        user = api.post("/users", json={"username": f"linked-{suffix}"}).json()
        platforms = [p["name"] for p in api.get("/platforms").json()]
    _sign_in(page)
    page.goto(f"/console/#/users/{user['id']}")
    picker = page.locator("#link-form select[name=platform]")
    expect(picker.locator("option")).to_have_text(platforms)
    picker.select_option(platforms[-1])
    page.fill("#link-form [name=tenant_id]", "org-1")
    page.fill("#link-form [name=platform_user_id]", f"emp-{suffix}")
    page.click("#link-form button[type=submit]")
    expect(page.locator("body")).to_contain_text(f"emp-{suffix}")
    with live.api() as api:
        linked = api.get(f"/users/{user['id']}").json()["identities"]
    assert [(i["platform"], i["tenant_id"], i["platform_user_id"]) for i in linked] == [
        (platforms[-1], "org-1", f"emp-{suffix}")
    ]
