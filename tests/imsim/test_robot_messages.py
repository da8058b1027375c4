"""Plain replies (sessionWebhook, batchSend, group send) and media download."""

import json

import pytest
from imsim_testkit import access_token, send_user_message, sim_json

pytestmark = pytest.mark.timeout(30)


async def _webhook(sim, make_app, stream_peer, **message):
    app = await make_app()
    peer = await stream_peer(app)
    sent = await send_user_message(sim, app, **message)
    data = json.loads((await peer.recv_type("CALLBACK"))["data"])
    return app, sent, data["sessionWebhook"]


async def test_session_webhook_replies_land_in_the_conversation(sim, make_app, stream_peer):
    app, sent, webhook = await _webhook(sim, make_app, stream_peer, sender_staff_id="u9")
    text = await sim.post(
        webhook, json={"msgtype": "text", "text": {"content": "plain answer"}, "at": {"atUserIds": ["u9"]}}
    )
    markdown = await sim.post(
        webhook, json={"msgtype": "markdown", "markdown": {"title": "Result", "text": "**bold** answer"}}
    )
    unsupported = await sim.post(webhook, json={"msgtype": "actionCard", "actionCard": {}})
    assert text.status_code == 200 and text.json() == {"errcode": 0, "errmsg": "ok"}
    assert markdown.json() == {"errcode": 0, "errmsg": "ok"}
    assert unsupported.status_code == 200 and unsupported.json()["errcode"] != 0

    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{sent['conversation_id']}"
    )
    user, first, second = conversation["items"]
    assert user["kind"] == "user"
    assert first == {
        "kind": "text",
        "text": "plain answer",
        "via": "webhook",
        "at_user_ids": ["u9"],
        "at": first["at"],
        "reply_to": sent["msg_id"],
        "link": "session",
    }
    assert second["kind"] == "markdown"
    assert second["title"] == "Result" and second["text"] == "**bold** answer"
    assert second["via"] == "webhook"


async def test_expired_session_is_refused(sim, make_app, stream_peer):
    app, sent, webhook = await _webhook(sim, make_app, stream_peer)
    expired = await sim.post(f"/sim/apps/{app['client_id']}/sessions/expire")
    assert expired.json()["expired"] == 1
    response = await sim.post(webhook, json={"msgtype": "text", "text": {"content": "late"}})
    assert response.status_code == 200
    assert response.json() == {"errcode": 300001, "errmsg": "session expired"}
    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{sent['conversation_id']}"
    )
    assert [i["kind"] for i in conversation["items"]] == ["user"]

    bogus = await sim.post(
        webhook.split("?")[0] + "?session=bogus", json={"msgtype": "text", "text": {"content": "x"}}
    )
    assert bogus.json()["errcode"] != 0


async def test_batch_send_and_group_send(sim, make_app):
    app = await make_app(robot_code="robot-77")
    group = await send_user_message(sim, app, conversation_type="2", conversation_title="G")
    headers = {"x-acs-dingtalk-access-token": await access_token(sim, app)}

    batch = await sim.post(
        "/v1.0/robot/oToMessages/batchSend",
        headers=headers,
        json={
            "robotCode": "robot-77",
            "userIds": ["a1", "a2"],
            "msgKey": "sampleText",
            "msgParam": json.dumps({"content": "hi both"}),
        },
    )
    assert batch.status_code == 200, batch.text
    assert "processQueryKey" in batch.json()
    to_group = await sim.post(
        "/v1.0/robot/groupMessages/send",
        headers=headers,
        json={
            "robotCode": "robot-77",
            "openConversationId": group["conversation_id"],
            "msgKey": "sampleMarkdown",
            "msgParam": json.dumps({"title": "T", "text": "# hey"}),
        },
    )
    assert to_group.status_code == 200, to_group.text
    wrong_robot = await sim.post(
        "/v1.0/robot/groupMessages/send",
        headers=headers,
        json={
            "robotCode": "other",
            "openConversationId": group["conversation_id"],
            "msgKey": "sampleText",
            "msgParam": "{}",
        },
    )
    bad_param = await sim.post(
        "/v1.0/robot/oToMessages/batchSend",
        headers=headers,
        json={"robotCode": "robot-77", "userIds": ["a1"], "msgKey": "sampleText", "msgParam": "{"},
    )
    assert wrong_robot.status_code == 400 and bad_param.status_code == 400

    conversations = {
        c["staff_id"] or c["conversation_id"]: c
        for c in await sim_json(sim, f"/sim/apps/{app['client_id']}/conversations")
    }
    for staff_id in ("a1", "a2"):
        [item] = conversations[staff_id]["items"]
        assert item["kind"] == "text" and item["text"] == "hi both" and item["via"] == "batchSend"
    group_items = conversations[group["conversation_id"]]["items"]
    assert [i["kind"] for i in group_items] == ["user", "markdown"]
    assert group_items[1]["title"] == "T" and group_items[1]["via"] == "groupSend"


async def test_media_round_trip(sim, make_app, stream_peer):
    app = await make_app()
    peer = await stream_peer(app)
    upload = await sim.post(
        f"/sim/apps/{app['client_id']}/media?file_name=report.pdf",
        content=b"%PDF-1.4 fake",
        headers={"content-type": "application/pdf"},
    )
    code = upload.json()["download_code"]
    assert upload.json()["size"] == 13

    await send_user_message(
        sim, app, msgtype="file", text=None, content={"downloadCode": code, "fileName": "report.pdf"}
    )
    await send_user_message(sim, app, msgtype="picture", text=None)
    await send_user_message(sim, app, msgtype="audio", text="spoken words")
    file_data = json.loads((await peer.recv_type("CALLBACK"))["data"])
    picture_data = json.loads((await peer.recv_type("CALLBACK"))["data"])
    audio_data = json.loads((await peer.recv_type("CALLBACK"))["data"])
    assert file_data["msgtype"] == "file" and "text" not in file_data
    assert file_data["content"]["downloadCode"] == code
    assert file_data["content"]["fileName"] == "report.pdf"
    assert {"fileId", "spaceId"} <= set(file_data["content"])
    assert {"downloadCode", "pictureDownloadCode"} <= set(picture_data["content"])
    assert audio_data["content"]["recognition"] == "spoken words"
    assert "duration" in audio_data["content"]

    headers = {"x-acs-dingtalk-access-token": await access_token(sim, app)}

    async def download(download_code):
        response = await sim.post(
            "/v1.0/robot/messageFiles/download",
            headers=headers,
            json={"robotCode": app["robot_code"], "downloadCode": download_code},
        )
        assert response.status_code == 200, response.text
        return await sim.get(response.json()["downloadUrl"])

    uploaded = await download(code)
    assert uploaded.content == b"%PDF-1.4 fake"
    assert uploaded.headers["content-type"] == "application/pdf"
    placeholder = await download(picture_data["content"]["downloadCode"])
    assert placeholder.content.startswith(b"\x89PNG")
    unknown = await sim.post(
        "/v1.0/robot/messageFiles/download",
        headers=headers,
        json={"robotCode": app["robot_code"], "downloadCode": "nope"},
    )
    assert unknown.status_code == 400
