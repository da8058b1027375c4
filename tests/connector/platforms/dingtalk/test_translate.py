"""DingTalk payloads (recorded from the documented fields) → InboundMessage."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from imgate_common.messages import ConversationType, InboundMessage, MessageKind
from imgate_common.platforms import DingTalkReplyData
from imgate_connector.platforms.dingtalk.translate import translate

FIXTURES = Path(__file__).parents[3] / "fixtures" / "dingtalk"


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_single_chat_text_is_trimmed_and_targets_the_sender() -> None:
    msg = translate(payload("text_single"), channel_id=7, robot_code=None)
    dingtalk = msg.target.data_as(DingTalkReplyData)
    assert msg.kind == MessageKind.TEXT
    assert msg.text == "What can you do?"
    assert msg.message_id == "msgQ3lVKqUOIDV8s7+Jjm3xhA=="
    assert msg.sender.id == "manager4352" and msg.sender.nick == "张三"
    assert msg.target.conversation_type == ConversationType.SINGLE
    assert msg.target.sender_employee_id == "manager4352"
    assert dingtalk.robot_code == "dingkzqiwbtuxmvcmcri"
    assert dingtalk.session_webhook_expires_at == datetime.fromtimestamp(1795486400, UTC)
    assert msg.sent_at == datetime.fromtimestamp(1795481000, UTC)
    assert msg.target.sent_at == msg.sent_at, "answers are ordered by it wherever they are rendered"
    assert msg.raw["senderCorpId"] == "dingd8e1123006514592"
    assert msg.sender.tenant_id == "dingd8e1123006514592" and msg.sender.employee_id == "manager4352"


def test_group_mention_keeps_title_and_at_flag_and_strips_the_bots_name() -> None:
    msg = translate(payload("text_group_at"), channel_id=7, robot_code=None)
    assert msg.target.conversation_type == ConversationType.GROUP
    assert msg.target.conversation_id == "cidGroup9x8y7z6=="
    assert msg.mentions_bot is True
    assert msg.mentions == []
    assert msg.text == "summarize today"
    assert msg.conversation_title == "产品讨论群"
    assert msg.sender.is_admin is True
    assert msg.target.sender_nick == "李四", "a group answer mentions the sender"


def group_text(text: str, at_users: list[dict[str, str]]) -> dict[str, Any]:
    data = payload("text_group_at")
    data["text"] = {"content": text}
    data["atUsers"] = at_users
    return data


BOT = {"dingtalkId": "$:LWCP_v1:$Cxz2Cs5XAJ8wQ5nn3WEnVg=="}
ALICE = {"dingtalkId": "$:LWCP_v1:$alice==", "staffId": "alice01"}


@pytest.mark.parametrize(
    ("text", "at_users", "names", "expected"),
    [
        ("@helper what is up", [BOT], (), "what is up"),
        ("@helper\u2005what is up", [BOT], (), "what is up"),
        (" what is up", [BOT], (), "what is up"),  # the client dropped the bot's mention already
        ("@Alice @helper review this", [ALICE, BOT], ("helper",), "@Alice review this"),
        ("@helper ask @Alice", [BOT, ALICE], (), "ask @Alice"),
        ("@Alice please check", [ALICE, BOT], (), "@Alice please check"),  # hers only in the text
        ("mail me at a@b.com", [BOT], (), "mail me at a@b.com"),
    ],
)
def test_only_the_bots_own_mention_is_stripped(
    text: str, at_users: list[dict[str, str]], names: tuple[str, ...], expected: str
) -> None:
    msg = translate(group_text(text, at_users), channel_id=7, robot_code=None, bot_names=names)
    assert msg.text == expected
    assert [m.id for m in msg.mentions] == [u["dingtalkId"] for u in at_users if u is not BOT]


def test_mentions_keep_who_was_mentioned() -> None:
    msg = translate(group_text("@helper hi @Alice", [BOT, ALICE]), channel_id=7, robot_code=None)
    assert msg.mentions_bot
    assert [(m.id, m.employee_id) for m in msg.mentions] == [("$:LWCP_v1:$alice==", "alice01")]


def test_single_chat_text_is_never_stripped() -> None:
    data = payload("text_single")
    data["text"] = {"content": "@someone hello"}
    assert translate(data, channel_id=7, robot_code=None).text == "@someone hello"


def test_rich_text_joins_text_parts_and_lists_images() -> None:
    msg = translate(payload("rich_text"), channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.RICH_TEXT
    assert msg.text == "What is in this picture?"
    assert [a.kind for a in msg.attachments] == [MessageKind.IMAGE]
    assert msg.attachments[0].download_code == "mIofN681YE3f/+m+NntqpU2f"


def test_audio_uses_the_recognized_text() -> None:
    msg = translate(payload("audio"), channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.AUDIO
    assert msg.text == "明天天气怎么样"
    assert msg.attachments[0].duration_ms == 4000


def test_picture_is_an_image_attachment() -> None:
    msg = translate(payload("picture"), channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.IMAGE
    assert msg.text == ""
    assert [(a.kind, a.download_code) for a in msg.attachments] == [(MessageKind.IMAGE, "picCode123")]


def test_file_keeps_its_name_and_download_code() -> None:
    data = payload("picture")
    data["msgtype"] = "file"
    data["content"] = {"downloadCode": "fileCode", "fileName": "notes.txt", "fileId": "f1"}
    msg = translate(data, channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.FILE
    assert [(a.name, a.download_code) for a in msg.attachments] == [("notes.txt", "fileCode")]


def test_video_is_kept_as_video_for_a_polite_refusal() -> None:
    data = payload("picture")
    data["msgtype"] = "video"
    data["content"] = {"downloadCode": "v1", "duration": "5000", "videoType": "mp4"}
    msg = translate(data, channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.VIDEO and msg.text == ""
    assert msg.attachments == [], "nothing for a model: the router's polite refusal"
    assert msg.raw["content"]["duration"] == "5000"


def test_audio_without_recognized_speech_has_nothing_to_answer() -> None:
    data = payload("audio")
    data["content"]["recognition"] = ""
    msg = translate(data, channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.AUDIO and msg.text == "" and msg.attachments == []


def test_unhandled_type_is_marked_unsupported_not_dropped() -> None:
    data = payload("picture")
    data["msgtype"] = "interactiveCard"
    msg = translate(data, channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.UNSUPPORTED
    assert msg.platform_type == "interactiveCard"
    assert msg.text == ""


def test_sender_without_staff_id_falls_back_to_sender_id_and_channel_robot_code() -> None:
    msg = translate(payload("external_sender"), channel_id=3, robot_code="channel-robot")
    assert msg.sender.id == "$:LWCP_v1:$guest42=="
    assert msg.sender.employee_id is None
    assert msg.target.data_as(DingTalkReplyData).robot_code == "channel-robot"
    assert msg.target.data_as(DingTalkReplyData).session_webhook is None


@pytest.mark.parametrize("name", [p.stem for p in FIXTURES.glob("*.json")])
def test_every_fixture_survives_the_bus_round_trip(name: str) -> None:
    msg = translate(payload(name), channel_id=1, robot_code=None)
    assert InboundMessage.model_validate_json(msg.model_dump_json()) == msg


def test_missing_msg_id_is_an_error() -> None:
    data = payload("text_single")
    del data["msgId"]
    with pytest.raises(KeyError):
        translate(data, channel_id=1, robot_code=None)
