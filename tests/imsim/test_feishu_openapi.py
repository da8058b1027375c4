"""Feishu's OpenAPI in imsim: tenant tokens, CardKit cards (create, stream with a rising
sequence, settings, full update), IM replies and sends with uuid idempotency, message
resources, limits (429 99991400) and faults; and what the user sees of it."""

import asyncio
import json

import pytest
from feishu_testkit import OpenApi, send_message, streaming_card, tenant_token
from imsim_testkit import sim_json, wait_for

pytestmark = pytest.mark.timeout(60)


def _path(app, suffix=""):
    return f"/sim/feishu/apps/{app['app_id']}{suffix}"


async def test_tenant_token_lives_its_ttl_and_is_refused_after(sim, make_feishu_app):
    app = await make_feishu_app(token_ttl=1)
    issued = await sim.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": app["app_id"], "app_secret": app["app_secret"]},
    )
    body = issued.json()
    assert body["code"] == 0 and body["expire"] == 1 and body["tenant_access_token"].startswith("t-")
    api = OpenApi(sim, body["tenant_access_token"])
    assert (
        await api.call("POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": streaming_card()})
    ).json()["code"] == 0
    await asyncio.sleep(1.1)
    expired = await api.call(
        "POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": streaming_card()}
    )
    assert expired.status_code == 400 and expired.json()["code"] == 99991663
    missing = await sim.post(
        "/open-apis/cardkit/v1/cards", json={"type": "card_json", "data": streaming_card()}
    )
    assert missing.status_code == 400 and missing.json()["code"] == 99991661
    wrong = await sim.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": app["app_id"], "app_secret": "nope"},
    )
    assert wrong.json()["code"] == 10014
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["api_calls"]["by_outcome"]["unauthorized"] == 1


async def test_a_long_lived_token_is_handed_out_again(sim, make_feishu_app):
    app = await make_feishu_app()
    first, second = await tenant_token(sim, app), await tenant_token(sim, app)
    assert first == second
    await sim.post(_path(app, "/tokens/expire"))
    assert await tenant_token(sim, app) != first
    assert (await sim_json(sim, _path(app, "/counters")))["tokens_issued"] == 2


async def test_bot_info_names_the_open_id_its_group_mentions_carry(sim, make_feishu_app):
    app = await make_feishu_app(name="Helper Bot")
    missing = await sim.get("/open-apis/bot/v3/info")
    assert missing.status_code == 400 and missing.json()["code"] == 99991661
    api = await OpenApi.for_app(sim, app)
    body = (await api.call("GET", "/open-apis/bot/v3/info")).json()
    assert body["code"] == 0
    assert body["bot"]["open_id"] == app["bot_open_id"] and body["bot"]["app_name"] == "Helper Bot"
    assert body["bot"]["activate_status"] == 2 and body["bot"]["ip_white_list"] == []


async def test_streaming_card_answer_as_the_user_sees_it(sim, make_feishu_app):
    app = await make_feishu_app()
    api = await OpenApi.for_app(sim, app)
    sent = await send_message(sim, app, text="tell me", sender_id="u7", sender_name="Ann")
    card_id = await api.create_card()
    replied = await api.reply_card(sent["message_id"], card_id, uuid="r-1")
    assert replied.json()["code"] == 0
    reply = replied.json()["data"]
    assert reply["msg_type"] == "interactive" and reply["chat_id"] == sent["chat_id"]
    assert reply["parent_id"] == sent["message_id"] and reply["sender"]["sender_type"] == "app"

    chats = {g["platform"]: g["chats"] for g in await sim_json(sim, "/sim/chats")}
    [chat] = [c for c in chats["feishu"] if c["chat_id"] == sent["chat_id"]]
    assert chat["last_text"] == "[Generating...]" and chat["user_id"] == "u7"

    assert (await api.stream(card_id, "Hel", 1)).json()["code"] == 0
    view = await sim_json(sim, _path(app, f"/events/{sent['event_id']}"))
    [card] = view["answers"]
    assert card["kind"] == "card" and card["state"] == "writing" and card["content"] == "Hel"
    assert card["reply_to"] == sent["message_id"] and card["link"] == "reply"

    stale = await api.stream(card_id, "Hello", 1)
    assert stale.status_code == 200 and stale.json()["code"] == 300317
    assert (await api.stream(card_id, "Hello", 2)).json()["code"] == 0
    assert (await api.finish(card_id, "Hello", 3)).json()["code"] == 0
    closed = await api.stream(card_id, "Hello!", 4)
    assert closed.json()["code"] == 300309

    card = await sim_json(sim, _path(app, f"/cards/{card_id}"))
    assert card["state"] == "done" and card["content"] == "Hello" and card["summary"] == "Hello"
    assert card["title"] == "Assistant" and card["sequence"] == 3
    assert [(u["op"], u["sequence"]) for u in card["updates"]] == [
        ("create", None),
        ("content", 1),
        ("content", 2),
        ("settings", 3),
    ]
    assert all(u["extends"] for u in card["updates"] if u["op"] == "content")
    chat = await sim_json(sim, f"/sim/platforms/feishu/apps/{app['app_id']}/chats/{sent['chat_id']}")
    assert [i["kind"] for i in chat["items"]] == ["user", "card"]
    chats = {g["platform"]: g["chats"] for g in await sim_json(sim, "/sim/chats")}
    assert [c["last_text"] for c in chats["feishu"] if c["chat_id"] == sent["chat_id"]] == ["Hello"]


async def test_full_update_and_malformed_cards(sim, make_feishu_app):
    app = await make_feishu_app()
    api = await OpenApi.for_app(sim, app)
    card_id = await api.create_card()
    done = json.loads(streaming_card("Final"))
    done["config"]["streaming_mode"] = False
    update = {"card": {"type": "card_json", "data": json.dumps(done)}, "sequence": 1}
    assert (await api.call("PUT", f"/open-apis/cardkit/v1/cards/{card_id}", update)).json()["code"] == 0
    card = await sim_json(sim, _path(app, f"/cards/{card_id}"))
    assert card["state"] == "done" and card["content"] == "Final"
    again = await api.call("PUT", f"/open-apis/cardkit/v1/cards/{card_id}", update)
    assert again.json()["code"] == 300317

    not_v2 = await api.call(
        "POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": '{"elements": []}'}
    )
    assert not_v2.json()["code"] != 0 and "2.0" in not_v2.json()["msg"]
    unknown = await api.stream("123", "x", 1)
    assert unknown.json()["code"] == 300301
    no_element = await api.stream(card_id, "x", 5, element_id="nope")
    assert no_element.json()["code"] == 300302
    malformed = await api.call(
        "PUT", f"/open-apis/cardkit/v1/cards/{card_id}/elements/answer/content", {"content": "x"}
    )
    assert malformed.status_code == 400 and malformed.json()["code"] == 10003


async def test_replies_are_idempotent_by_uuid_and_sends_find_the_chat(sim, make_feishu_app):
    app = await make_feishu_app()
    api = await OpenApi.for_app(sim, app)
    sent = await send_message(sim, app, text="hi", sender_id="u9")
    first = await api.reply(sent["message_id"], "text", {"text": "hello"}, uuid="same")
    second = await api.reply(sent["message_id"], "text", {"text": "hello"}, uuid="same")
    assert first.json()["data"]["message_id"] == second.json()["data"]["message_id"]
    post = {
        "zh_cn": {"title": "T", "content": [[{"tag": "text", "text": "rich "}, {"tag": "a", "text": "link"}]]}
    }
    assert (await api.reply(sent["message_id"], "post", post)).json()["code"] == 0
    [event] = await sim_json(sim, _path(app, "/events"))
    assert event["answers"] == 2

    by_chat = await api.call(
        "POST",
        "/open-apis/im/v1/messages",
        {"receive_id": sent["chat_id"], "msg_type": "text", "content": json.dumps({"text": "later"})},
        receive_id_type="chat_id",
    )
    assert by_chat.json()["code"] == 0
    unknown = await api.call(
        "POST",
        "/open-apis/im/v1/messages",
        {"receive_id": "oc_nobody", "msg_type": "text", "content": "{}"},
        receive_id_type="chat_id",
    )
    assert unknown.json()["code"] != 0
    bad = await api.call(
        "POST",
        f"/open-apis/im/v1/messages/{sent['message_id']}/reply",
        {"msg_type": "text", "content": "not json"},
    )
    assert bad.json()["code"] == 230001
    chat = await sim_json(sim, _path(app, f"/chats/{sent['chat_id']}"))
    assert [(i["kind"], i.get("text")) for i in chat["items"]] == [
        ("user", "hi"),
        ("text", "hello"),
        ("markdown", "T\nrich link"),
        ("text", "later"),
    ]
    # A send names no message; nothing was pushed to the bot yet, so it answers none.
    assert [i.get("link") for i in chat["items"][1:]] == ["reply", "reply", None]
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["messages"] == {"reply": 2, "send": 1, "uuid_repeats": 1}


async def test_send_by_open_id_reaches_the_users_p2p_chat(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    peer = await feishu_peer(app)
    sent = await send_message(sim, app, text="hi", sender_id="u3")
    frames, event = await peer.recv_event()
    await peer.ack(frames[0])
    open_id = event["event"]["sender"]["sender_id"]["open_id"]
    api = await OpenApi.for_app(sim, app)
    answer = await api.call(
        "POST",
        "/open-apis/im/v1/messages",
        {"receive_id": open_id, "msg_type": "text", "content": json.dumps({"text": "ping"})},
        receive_id_type="open_id",
    )
    assert answer.json()["data"]["chat_id"] == sent["chat_id"]


async def test_media_of_user_messages_is_served_by_the_resource_api(sim, make_feishu_app):
    app = await make_feishu_app()
    api = await OpenApi.for_app(sim, app)
    image = await send_message(sim, app, message_type="image", text=None)
    key = image["content"]["image_key"]
    got = await api.call(
        "GET", f"/open-apis/im/v1/messages/{image['message_id']}/resources/{key}", type="image"
    )
    assert (
        got.status_code == 200
        and got.headers["content-type"] == "image/png"
        and got.content.startswith(b"\x89PNG")
    )
    wrong_type = await api.call(
        "GET", f"/open-apis/im/v1/messages/{image['message_id']}/resources/{key}", type="file"
    )
    assert wrong_type.json()["code"] == 10003
    document = await send_message(sim, app, message_type="file", text=None, file_name="plan.pdf")
    assert document["content"]["file_name"] == "plan.pdf"
    got = await api.call(
        "GET",
        f"/open-apis/im/v1/messages/{document['message_id']}/resources/{document['content']['file_key']}",
        type="file",
    )
    assert got.status_code == 200 and 'filename="plan.pdf"' in got.headers["content-disposition"]
    other = await api.call(
        "GET", f"/open-apis/im/v1/messages/{document['message_id']}/resources/{key}", type="image"
    )
    assert other.json()["code"] != 0
    audio = await send_message(sim, app, message_type="audio", text=None)
    assert set(audio["content"]) == {"file_key", "duration"}
    post = await send_message(sim, app, message_type="post", text="rich")
    assert post["content"] == {"title": "", "content": [[{"tag": "text", "text": "rich"}]]}


async def test_rate_limits_answer_429_with_the_reset_header(sim, make_feishu_app):
    app = await make_feishu_app(fault_config={"api_qps_limit": 2})
    api = await OpenApi.for_app(sim, app)
    answers = [
        await api.call("POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": streaming_card()})
        for _ in range(3)
    ]
    assert [a.status_code for a in answers[:2]] == [200, 200]
    limited = answers[2]
    assert limited.status_code == 429 and limited.json()["code"] == 99991400
    assert (
        limited.headers["x-ogw-ratelimit-limit"] == "2" and int(limited.headers["x-ogw-ratelimit-reset"]) >= 1
    )
    # Each API has its own budget.
    sent = await send_message(sim, app)
    assert (await api.reply(sent["message_id"], "text", {"text": "ok"})).status_code == 200

    await sim.patch(_path(app, "/faults/config"), json={"api_qps_limit": None, "card_ops_limit": 3})
    card_id = answers[0].json()["data"]["card_id"]
    codes = [(await api.stream(card_id, "x" * i, i)).status_code for i in range(1, 6)]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:]
    counters = await sim_json(sim, _path(app, "/counters"))
    assert counters["throttled"]["429"] == 1 + codes.count(429)
    assert counters["api_calls"]["by_outcome"]["rate_limited"] == 1
    assert counters["api_calls"]["by_outcome"]["card_rate_limited"] == codes.count(429)


async def test_cards_and_messages_down_and_failures(sim, make_feishu_app):
    app = await make_feishu_app(fault_config={"cards_down": True, "messages_down": True})
    api = await OpenApi.for_app(sim, app)
    sent = await send_message(sim, app)
    down = await api.call(
        "POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": streaming_card()}
    )
    assert down.status_code == 503 and down.json()["code"] != 0
    assert (await api.reply(sent["message_id"], "text", {"text": "x"})).status_code == 503
    await sim.patch(
        _path(app, "/faults/config"),
        json={"cards_down": False, "messages_down": False, "api_failure_rate": 1.0},
    )
    failed = await api.call(
        "POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": streaming_card()}
    )
    assert failed.status_code == 500
    counters = await sim_json(sim, _path(app, "/counters"))
    outcomes = counters["api_calls"]["by_outcome"]
    assert (
        outcomes["cards_down"] == 1 and outcomes["messages_down"] == 1 and outcomes["failure_injected"] == 1
    )
    assert (await sim_json(sim, _path(app, f"/chats/{sent['chat_id']}")))["items"][1:] == []
    platforms = {p["name"]: p for p in await sim_json(sim, "/sim/platforms")}
    [summary] = [a for a in platforms["feishu"]["apps"] if a["app_id"] == app["app_id"]]
    assert summary["faults_on"] == ["API failures 100%"]


async def test_the_shared_sim_api_plays_the_user_on_feishu(sim, make_feishu_app, feishu_peer):
    app = await make_feishu_app()
    peer = await feishu_peer(app)
    injected = await sim.post(
        f"/sim/platforms/feishu/apps/{app['app_id']}/messages",
        json={"kind": "rich_text", "text": "hello", "group": "Team", "sender_id": "u5"},
    )
    assert injected.status_code == 200 and injected.json()["delivered"] is True
    frames, event = await peer.recv_event()
    message = event["event"]["message"]
    assert message["message_type"] == "post" and message["chat_type"] == "group"
    assert message["message_id"] == injected.json()["msg_id"]
    assert json.loads(message["content"])["content"][0][0] == {
        "tag": "at",
        "user_id": "@_user_1",
        "user_name": app["name"],
    }
    await peer.ack(frames[0])
    await wait_for(
        lambda: sim_json(
            sim, f"/sim/platforms/feishu/apps/{app['app_id']}/chats/{injected.json()['chat_id']}"
        ),
        lambda chat: chat["items"][0]["status"] == "acked",
    )
    refused = await sim.patch(f"/sim/platforms/feishu/apps/{app['app_id']}/faults", json={"cards_down": "x"})
    assert refused.status_code == 422
    await sim.post(f"/sim/feishu/apps/{app['app_id']}/reset")
    assert (await sim_json(sim, _path(app, "/counters")))["events"]["events"] == 0


async def test_a_chat_takes_a_few_messages_a_second(sim, make_feishu_app):
    app = await make_feishu_app(fault_config={"chat_send_limit": 2})
    api = await OpenApi.for_app(sim, app)
    busy = await send_message(sim, app, text="one", sender_id="busy")
    quiet = await send_message(sim, app, text="two", sender_id="quiet")
    codes = [
        (await api.reply(busy["message_id"], "text", {"text": f"r{i}"})).json()["code"] for i in range(3)
    ]
    assert codes == [0, 0, 230020]
    assert (await api.reply(quiet["message_id"], "text", {"text": "other chat"})).json()["code"] == 0
    chat = await sim_json(sim, _path(app, f"/chats/{busy['chat_id']}"))
    assert [i.get("text") for i in chat["items"]] == ["one", "r0", "r1"]


async def test_streaming_mode_turns_itself_off_after_its_timeout(sim, make_feishu_app):
    app = await make_feishu_app(streaming_timeout=0.5)
    api = await OpenApi.for_app(sim, app)
    card_id = await api.create_card()
    assert (await api.stream(card_id, "part", 1)).json()["code"] == 0
    await asyncio.sleep(0.6)
    assert (await api.stream(card_id, "part two", 2)).json()["code"] == 300309
    card = await sim_json(sim, _path(app, f"/cards/{card_id}"))
    assert card["state"] == "done" and card["content"] == "part" and card["streaming_mode"] is False
    on_again = {"config": {"streaming_mode": True}}
    assert (
        await api.call(
            "PATCH",
            f"/open-apis/cardkit/v1/cards/{card_id}/settings",
            {"settings": json.dumps(on_again), "sequence": 3},
        )
    ).json()["code"] == 0
    assert (await api.stream(card_id, "part two", 4)).json()["code"] == 0
