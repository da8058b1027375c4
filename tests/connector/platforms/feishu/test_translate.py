"""Feishu `im.message.receive_v1` events (written from the documented examples) → InboundMessage."""

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from imgate_common.messages import ConversationType, MessageKind
from imgate_common.platforms import FeishuReplyData
from imgate_connector.platforms.feishu.translate import reply_target_of, translate

FIXTURES = Path(__file__).parents[3] / "fixtures" / "feishu"
BOT = "ou_bot0001"


def payload(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def test_single_chat_text_names_the_person_and_targets_the_message() -> None:
    msg = translate(payload("text_p2p"), channel_id=7, bot_open_id=BOT)
    feishu = msg.target.data_as(FeishuReplyData)
    assert (msg.kind, msg.text, msg.platform_type) == (MessageKind.TEXT, "What can you do?", "text")
    assert msg.message_id == "om_5ce6d572455d361153b7cb51da133945"
    # The person across the organisation's apps; their own id in it; the organisation.
    assert msg.sender.id == "on_8ed6aa67826108097d9ee143816345"
    assert msg.sender.employee_id == "e33ggbyz" and msg.sender.tenant_id == "2ca1d211f64f6438"
    # Answering needs the app's id of them, and the message to reply to.
    assert msg.target.sender_id == "ou_84aad35d084aa403a838cf73ee18467"
    assert msg.target.inbound_message_id == msg.message_id
    assert msg.target.conversation_id == "oc_5ce6d572455d361153b7cb51da133945"
    assert msg.target.conversation_type == ConversationType.SINGLE
    assert (feishu.tenant_key, feishu.chat_type, feishu.thread_id) == ("2ca1d211f64f6438", "p2p", None)
    assert msg.sent_at == datetime.fromtimestamp(1795481000, UTC) == msg.target.sent_at
    assert msg.raw["header"]["event_id"] == "5e3702a84e847582be8db7fb73283c02"
    assert msg.mentions_bot is False


def test_group_mention_of_the_bot_is_removed_and_others_are_named() -> None:
    msg = translate(payload("text_group_at"), channel_id=7, bot_open_id=BOT)
    feishu = msg.target.data_as(FeishuReplyData)
    assert msg.target.conversation_type == ConversationType.GROUP
    assert msg.mentions_bot is True
    assert msg.text == "summarize today with @Alice"
    assert [(m.id, m.employee_id) for m in msg.mentions] == [("ou_alice", "alice01")]
    assert (feishu.root_id, feishu.thread_id) == ("om_root_0001", "omt_thread_0001")


def test_without_the_bots_id_the_leading_mention_of_a_group_message_is_the_bots() -> None:
    msg = translate(payload("text_group_at"), channel_id=7, bot_open_id=None)
    assert msg.mentions_bot is True
    assert msg.text == "summarize today with @Alice"


def test_a_mention_of_someone_else_is_not_the_bots() -> None:
    data = payload("text_group_at")
    data["event"]["message"]["content"] = json.dumps({"text": "@_user_2 can you check?"})
    data["event"]["message"]["mentions"] = data["event"]["message"]["mentions"][1:]
    msg = translate(data, channel_id=7, bot_open_id=BOT)
    assert msg.mentions_bot is False and msg.text == "@Alice can you check?"


def test_rich_text_becomes_lines_with_links_and_its_pictures_attachments() -> None:
    msg = translate(payload("post"), channel_id=7, bot_open_id=BOT)
    assert msg.kind == MessageKind.RICH_TEXT
    assert msg.text == "Weekly report\nNumbers are [here](https://example.com/q3)\nplease summarize"
    assert msg.mentions_bot is True
    [image] = msg.attachments
    assert (image.kind, image.download_code) == (
        MessageKind.IMAGE,
        "img_v2_041b28e3-5680-48c2-9af2-497ace79333g",
    )


@pytest.mark.parametrize(
    ("name", "kind", "codes"),
    [
        ("image", MessageKind.IMAGE, ["img_v2_041b28e3-5680-48c2-9af2-497ace79333g"]),
        ("file", MessageKind.FILE, ["file_v2_0c0b7d9b-3b2e-4a1b-8c3d-1c2b3d4e5f6g"]),
        ("audio", MessageKind.AUDIO, []),  # no transcript: a polite refusal, nothing fetched
        ("media", MessageKind.VIDEO, []),
        ("sticker", MessageKind.UNSUPPORTED, []),
        ("share_chat", MessageKind.UNSUPPORTED, []),
    ],
)
def test_media_and_other_types(name: str, kind: MessageKind, codes: list[str]) -> None:
    msg = translate(payload(name), channel_id=7, bot_open_id=BOT)
    assert msg.kind == kind and msg.text == ""
    assert [a.download_code for a in msg.attachments] == codes
    assert msg.platform_type == payload(name)["event"]["message"]["message_type"]


def test_a_file_keeps_its_name() -> None:
    [attachment] = translate(payload("file"), channel_id=7).attachments
    assert attachment.name == "notes.txt"


def test_a_message_type_never_seen_is_unsupported_not_an_error() -> None:
    data = payload("text_p2p")
    data["event"]["message"].update(message_type="hologram", content='{"beam": 3}')
    assert translate(data, channel_id=7).kind == MessageKind.UNSUPPORTED


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: d["event"]["message"].pop("message_id"),
        lambda d: d["event"]["message"].update(content="{not json"),
        lambda d: d["event"]["message"].update(content='["a list"]'),
        lambda d: d["event"]["sender"]["sender_id"].pop("open_id"),
        lambda d: d["event"].pop("message"),
        lambda d: d.update(event="text"),
    ],
)
def test_an_unreadable_event_raises_what_the_pipeline_treats_as_malformed(damage: Any) -> None:
    data = payload("text_p2p")
    damage(data)
    with pytest.raises((KeyError, ValueError, TypeError)):
        translate(data, channel_id=7)


def test_the_sender_of_an_unreadable_event_is_answered_in_its_chat() -> None:
    data = payload("text_group_at")
    data["event"]["message"]["content"] = "{not json"
    target = reply_target_of(data, channel_id=7)
    assert target is not None
    assert (target.sender_id, target.inbound_message_id) == (
        "ou_84aad35d084aa403a838cf73ee18467",
        "om_group_at_01",
    )
    assert target.conversation_type == ConversationType.GROUP


def test_no_one_to_answer_for_an_event_without_a_person() -> None:
    data = payload("text_p2p")
    data["event"]["sender"]["sender_type"] = "app"
    assert reply_target_of(data, 7) is None
    assert reply_target_of({"event": "?"}, 7) is None
    assert reply_target_of([1, 2], 7) is None


def test_the_apps_id_stands_in_where_an_event_has_no_union_id() -> None:
    data = payload("text_p2p")
    del data["event"]["sender"]["sender_id"]["union_id"]
    del data["event"]["sender"]["sender_id"]["user_id"]
    msg = translate(data, channel_id=7)
    assert msg.sender.id == "ou_84aad35d084aa403a838cf73ee18467" and msg.sender.employee_id is None
