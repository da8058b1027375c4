"""DingTalk payloads (recorded from the documented fields) → InboundMessage."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from imgate_common.messages import ConversationType, InboundMessage, MessageKind
from imgate_connector.platforms.dingtalk.translate import translate

FIXTURES = Path(__file__).parent.parent / "fixtures" / "dingtalk"


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_single_chat_text_is_trimmed_and_targets_the_sender() -> None:
    msg = translate(payload("text_single"), channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.TEXT
    assert msg.text == "What can you do?"
    assert msg.message_id == "msgQ3lVKqUOIDV8s7+Jjm3xhA=="
    assert msg.sender.id == "manager4352" and msg.sender.nick == "张三"
    assert msg.target.conversation_type == ConversationType.SINGLE
    assert msg.target.sender_staff_id == "manager4352"
    assert msg.target.robot_code == "dingkzqiwbtuxmvcmcri"
    assert msg.target.session_webhook_expires_at == datetime.fromtimestamp(1795486400, UTC)
    assert msg.sent_at == datetime.fromtimestamp(1795481000, UTC)
    assert msg.raw["senderCorpId"] == "dingd8e1123006514592"


def test_group_mention_keeps_title_and_at_flag() -> None:
    msg = translate(payload("text_group_at"), channel_id=7, robot_code=None)
    assert msg.target.conversation_type == ConversationType.GROUP
    assert msg.target.conversation_id == "cidGroup9x8y7z6=="
    assert msg.mentions_bot is True
    assert msg.conversation_title == "产品讨论群"
    assert msg.sender.is_admin is True


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


def test_unhandled_type_is_marked_unsupported_not_dropped() -> None:
    msg = translate(payload("picture"), channel_id=7, robot_code=None)
    assert msg.kind == MessageKind.UNSUPPORTED
    assert msg.platform_type == "picture"
    assert msg.text == ""


def test_sender_without_staff_id_falls_back_to_sender_id_and_channel_robot_code() -> None:
    msg = translate(payload("external_sender"), channel_id=3, robot_code="channel-robot")
    assert msg.sender.id == "$:LWCP_v1:$guest42=="
    assert msg.sender.staff_id is None
    assert msg.target.robot_code == "channel-robot"
    assert msg.target.session_webhook is None


@pytest.mark.parametrize("name", [p.stem for p in FIXTURES.glob("*.json")])
def test_every_fixture_survives_the_bus_round_trip(name: str) -> None:
    msg = translate(payload(name), channel_id=1, robot_code=None)
    assert InboundMessage.model_validate_json(msg.model_dump_json()) == msg


def test_missing_msg_id_is_an_error() -> None:
    data = payload("text_single")
    del data["msgId"]
    with pytest.raises(KeyError):
        translate(data, channel_id=1, robot_code=None)
