"""The sim API's own bookkeeping: apps, settings at run time, the chat page, start-up apps."""

import re

import pytest
from imsim_testkit import ENV_APP, PRESET_APP, send_user_message, sim_json

pytestmark = pytest.mark.timeout(30)


async def test_healthz(sim):
    response = await sim.get("/healthz")
    assert response.status_code == 200 and response.json() == {"ok": True}


async def test_apps_from_command_line_and_env(sim):
    apps = {a["client_id"]: a for a in await sim_json(sim, "/sim/apps")}
    client_id, secret, robot_code = PRESET_APP
    assert apps[client_id]["robot_code"] == robot_code
    assert apps[ENV_APP[0]]["robot_code"] == ENV_APP[0]  # robot code defaults to the client id
    assert all("client_secret" not in a for a in apps.values())
    opened = await sim.post(
        "/v1.0/gateway/connections/open",
        json={"clientId": client_id, "clientSecret": secret, "subscriptions": []},
    )
    assert opened.status_code == 200


async def test_upsert_is_idempotent_and_patch_changes_settings(sim, make_app):
    app = await make_app(redeliver_after=5, name="First")
    again = await sim.post(
        "/sim/apps", json={"client_id": app["client_id"], "client_secret": "rotated", "ping_interval": 7}
    )
    assert again.status_code == 200
    body = again.json()
    assert body["name"] == "First" and body["redeliver_after"] == 5 and body["ping_interval"] == 7
    ids = [a["client_id"] for a in await sim_json(sim, "/sim/apps")]
    assert ids.count(app["client_id"]) == 1
    old_secret = await sim.post(
        "/v1.0/gateway/connections/open",
        json={"clientId": app["client_id"], "clientSecret": app["client_secret"]},
    )
    assert old_secret.status_code == 401

    patched = await sim.patch(f"/sim/apps/{app['client_id']}", json={"redeliver_after": 0.5, "token_ttl": 60})
    assert patched.json()["redeliver_after"] == 0.5 and patched.json()["token_ttl"] == 60
    assert patched.json()["ping_interval"] == 7
    invalid = await sim.patch(f"/sim/apps/{app['client_id']}", json={"redeliver_after": -1})
    assert invalid.status_code == 422
    assert (await sim.patch("/sim/apps/nope", json={})).status_code == 404


async def test_conversations_list_and_lookup(sim, make_app):
    app = await make_app()
    one = await send_user_message(sim, app, text="first", sender_staff_id="s1")
    await send_user_message(sim, app, text="second", sender_staff_id="s1")
    group = await send_user_message(
        sim, app, text="in group", conversation_type="2", conversation_id="cid/with+slash=="
    )
    listed = await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations")
    assert {c["conversation_id"] for c in listed} == {one["conversation_id"], group["conversation_id"]}
    single = await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations/{one['conversation_id']}")
    assert single["type"] == "1" and single["staff_id"] == "s1"
    assert [i["text"] for i in single["items"]] == ["first", "second"]
    assert all(
        i["kind"] == "user" and i["msgtype"] == "text" and i["sender_staff_id"] == "s1"
        for i in single["items"]
    )
    assert single["items"][0]["at"] <= single["items"][1]["at"]
    grouped = await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations/{group['conversation_id']}")
    assert grouped["type"] == "2" and grouped["items"][0]["text"] == "in group"
    summary = await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations?summary=true")
    assert all("items" not in c for c in summary)
    assert {c["last_text"] for c in summary} == {"second", "in group"}
    missing = await sim.get(f"/sim/apps/{app['client_id']}/conversations/none")
    assert missing.status_code == 404


async def test_chat_page_is_self_contained(sim):
    response = await sim.get("/")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    # The page reads only the platform-neutral sim API.
    assert "/sim/chats" in html and "/sim/platforms" in html and "/sim/apps" not in html
    assert "<script>" in html and "<style>" in html
    # No CDN, fonts or other remote resources.
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)
    assert "@import" not in html
