"""`/messages`: what the user sees for one message, how answers are tied to messages, and the
message kinds a user can send."""

import json

import pytest
from imsim_testkit import CardApi, message_path, send_user_message, sim_json, wait_for

pytestmark = pytest.mark.timeout(30)


async def test_message_view_shows_its_answers_and_travel(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app, text="explain", sender_staff_id="u1")
    frame = await peer.recv_type("CALLBACK")
    await peer.ack(frame)
    webhook = json.loads(frame["data"])["sessionWebhook"]
    await sim.post(webhook, json={"msgtype": "text", "text": {"content": "on it"}})
    api = await CardApi.for_app(sim, app)
    await api.create_and_deliver("answer", staff_id="u1")
    await api.stream("answer", "Done.", full=True, finalize=True)
    await api.set_status("answer", "3")

    message = await wait_for(lambda: sim_json(sim, message_path(app, sent["msg_id"])), lambda m: m["acks"])
    assert message["msg_id"] == sent["msg_id"]
    assert message["conversation_id"] == sent["conversation_id"]
    assert message["status"] == "acked" and message["frames"] == 1
    assert message["user"]["text"] == "explain" and message["user"]["kind"] == "user"
    text, card = message["answers"]
    assert (text["kind"], text["text"], text["reply_to"], text["link"]) == (
        "text",
        "on it",
        sent["msg_id"],
        "session",
    )
    assert (card["kind"], card["out_track_id"], card["link"]) == ("card", "answer", "order")
    assert card["content"] == "Done." and card["flow_status"] == "3"
    assert [u["op"] for u in card["updates"]] == ["create", "deliver", "full", "update"]
    assert all(isinstance(u["at"], int) for u in card["updates"])
    assert [d["frame_id"] for d in message["deliveries"]] == [sent["frame_id"]]
    assert [a["code"] for a in message["acks"]] == [200]

    listed = await sim_json(sim, f"/sim/apps/{app['client_id']}/messages")
    assert [(m["msg_id"], m["answers"]) for m in listed] == [(sent["msg_id"], 2)]
    assert (await sim.get(message_path(app, "msgUnknown/+=="))).status_code == 404


async def test_answers_follow_the_conversation_order(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    api = await CardApi.for_app(sim, app)

    async def say(text):
        sent = await send_user_message(sim, app, text=text, sender_staff_id="u1")
        frame = await peer.recv_type("CALLBACK")
        await peer.ack(frame)
        return sent["msg_id"], json.loads(frame["data"])["sessionWebhook"]

    async def reply_to(out_track_id):
        card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/{out_track_id}")
        conversation = await sim_json(
            sim, f"/sim/apps/{app['client_id']}/conversations/{card['spaces'][0]['conversation_id']}"
        )
        [item] = [i for i in conversation["items"] if i.get("out_track_id") == out_track_id]
        return item["reply_to"]

    # A burst: three messages before any card; cards answer them oldest first.
    burst = [(await say(f"q{i}"))[0] for i in range(3)]
    for i in range(3):
        await api.create_and_deliver(f"b{i}", staff_id="u1")
    assert [await reply_to(f"b{i}") for i in range(3)] == burst
    # A second card once everything is answered belongs to the latest message.
    await api.create_and_deliver("extra", staff_id="u1")
    assert await reply_to("extra") == burst[-1]

    # A message answered through its webhook only (a command, say) does not take the next card.
    command, webhook = await say("/new")
    await sim.post(webhook, json={"msgtype": "text", "text": {"content": "new conversation"}})
    question, _ = await say("fresh question")
    await api.create_and_deliver("fresh", staff_id="u1")
    assert await reply_to("fresh") == question
    answers = (await sim_json(sim, message_path(app, command)))["answers"]
    assert [(a["text"], a["link"]) for a in answers] == [("new conversation", "session")]

    # Verbatim test payloads are never answered.
    raw = await send_user_message(sim, app, raw_data="{not json", sender_staff_id="u1")
    await peer.ack(await peer.recv_type("CALLBACK"))
    await api.create_and_deliver("after-raw", staff_id="u1")
    assert await reply_to("after-raw") == question
    assert (await sim_json(sim, message_path(app, raw["msg_id"])))["answers"] == []


async def test_robot_api_reply_links_by_order(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app, conversation_type="2", conversation_title="Ops")
    await peer.ack(await peer.recv_type("CALLBACK"))
    api = await CardApi.for_app(sim, app)
    response = await api.call(
        "POST",
        "/v1.0/robot/groupMessages/send",
        {
            "robotCode": app["robot_code"],
            "openConversationId": sent["conversation_id"],
            "msgKey": "sampleMarkdown",
            "msgParam": json.dumps({"title": "T", "text": "**fallback**"}),
        },
    )
    assert response.status_code == 200
    [answer] = (await sim_json(sim, message_path(app, sent["msg_id"])))["answers"]
    assert answer["via"] == "groupSend" and answer["link"] == "order" and answer["text"] == "**fallback**"


async def test_every_message_kind_reaches_the_bot(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    kinds = [
        {"msgtype": "text", "text": "plain"},
        {"msgtype": "richText", "content": {"richText": [{"text": "see "}, {"type": "picture"}]}},
        {"msgtype": "picture"},
        {"msgtype": "audio", "text": "recognized speech"},
        {"msgtype": "file", "content": {"fileName": "a.txt"}},
        {"msgtype": "video"},
    ]
    for body in kinds:
        await send_user_message(sim, app, **{"text": None, **body})
    received = [json.loads((await peer.recv_type("CALLBACK"))["data"]) for _ in kinds]
    assert [d["msgtype"] for d in received] == [k["msgtype"] for k in kinds]
    text, rich, picture, audio, file, video = received
    assert text["text"] == {"content": "plain"}
    assert rich["content"]["richText"][0] == {"text": "see "}
    assert rich["content"]["richText"][1]["downloadCode"]
    assert picture["content"]["downloadCode"] and picture["content"]["pictureDownloadCode"]
    assert audio["content"]["recognition"] == "recognized speech" and audio["content"]["duration"]
    assert file["content"]["fileName"] == "a.txt" and file["content"]["downloadCode"]
    assert video["content"]["videoType"] == "mp4" and video["content"]["downloadCode"]

    # In a group, a message that does not @mention the bot says so.
    await send_user_message(sim, app, conversation_type="2", conversation_title="G", at_bot=False)
    group = json.loads((await peer.recv_type("CALLBACK"))["data"])
    assert group["isInAtList"] is False and group["atUsers"] == []
    assert group["conversationTitle"] == "G"
    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{group['conversationId']}"
    )
    assert conversation["type"] == "2" and conversation["title"] == "G"
