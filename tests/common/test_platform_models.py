"""Platform-neutral shared models: one name per platform, the registry's unions, and bodies
written in the old DingTalk-worded shape (still in streams, dead letters and queues) loading."""

from datetime import UTC, datetime
from typing import Any, Literal, get_args

import pytest
from pydantic import ValidationError

from imgate_common.messages import (
    REPLY_EVENT,
    InboundMessage,
    Notice,
    ReplyTarget,
    RunRequest,
)
from imgate_common.platform_config import LdapUserMapping, parse_user_mapping
from imgate_common.platforms import (
    PLATFORM_CONFIGS,
    REGISTRY,
    AnyPlatformConfig,
    DingTalkConfig,
    DingTalkReplyData,
    Platform,
    PlatformModels,
    PlatformReplyData,
    registry_of,
)
from tests.support.factories import reply_target

EXPIRES = "2026-11-30T10:00:00Z"

# A reply target as it was serialized before the neutral names: DingTalk's fields flat.
OLD_TARGET: dict[str, Any] = {
    "platform": "dingtalk",
    "channel_id": 7,
    "conversation_id": "cid1",
    "conversation_type": "group",
    "sender_id": "manager4352",
    "sender_staff_id": "manager4352",
    "sender_nick": "张三",
    "robot_code": "dingrobot",
    "session_webhook": "https://oapi.dingtalk.com/robot/sendBySession?session=abc",
    "session_webhook_expires_at": EXPIRES,
    "inbound_message_id": "msg1",
    "sent_at": None,
}

OLD_INBOUND: dict[str, Any] = {
    "v": 1,
    "platform": "dingtalk",
    "channel_id": 7,
    "message_id": "msg1",
    "kind": "text",
    "text": "hi",
    "platform_type": "text",
    "attachments": [],
    "mentions_bot": True,
    "mentions": [{"id": "$:LWCP_v1:$alice==", "staff_id": "alice01"}],
    "sender": {
        "id": "manager4352",
        "staff_id": "manager4352",
        "nick": "张三",
        "corp_id": "dingcorp",
        "is_admin": False,
    },
    "conversation_title": None,
    "target": OLD_TARGET,
    "sent_at": None,
    "received_at": "2026-11-30T08:30:00Z",
    "raw": {},
    "replay": 0,
}


def assert_dingtalk_target(target: ReplyTarget) -> None:
    assert target.sender_employee_id == "manager4352"
    assert target.platform_data == DingTalkReplyData(
        robot_code="dingrobot",
        session_webhook=OLD_TARGET["session_webhook"],
        session_webhook_expires_at=datetime(2026, 11, 30, 10, tzinfo=UTC),
    )


def test_an_inbound_message_in_the_old_shape_loads_into_the_neutral_fields() -> None:
    message = InboundMessage.model_validate(OLD_INBOUND)
    assert message.sender.employee_id == "manager4352" and message.sender.tenant_id == "dingcorp"
    assert message.mentions[0].employee_id == "alice01"
    assert_dingtalk_target(message.target)
    again = InboundMessage.model_validate_json(message.model_dump_json())
    assert again == message, "the new shape round-trips"
    assert "staff_id" not in message.model_dump_json() and "corp_id" not in message.model_dump_json()


def test_a_queued_run_and_a_reply_event_in_the_old_shape_load() -> None:
    request = RunRequest.model_validate(
        {
            "run_id": "r",
            "channel_id": 7,
            "conversation_id": "c",
            "agent_id": 1,
            "user_id": 1,
            "user_message_id": 1,
            "text": "hi",
            "target": OLD_TARGET,
        }
    )
    assert_dingtalk_target(request.target)
    event = REPLY_EVENT.validate_python(
        {"kind": "notice", "run_id": "r", "channel_id": 7, "target": OLD_TARGET, "text": "x"}
    )
    assert isinstance(event, Notice)
    assert_dingtalk_target(event.target)


def test_an_old_target_without_dingtalk_fields_has_no_platform_part() -> None:
    old = {**OLD_TARGET, "robot_code": None, "session_webhook": None, "session_webhook_expires_at": None}
    target = ReplyTarget.model_validate(old)
    assert target.platform_data is None
    assert target.data_as(DingTalkReplyData) == DingTalkReplyData()


def test_the_platform_part_is_tagged_by_its_platform() -> None:
    target = reply_target(platform_data={"platform": "dingtalk", "robot_code": "r"})
    assert target.data_as(DingTalkReplyData).robot_code == "r"
    with pytest.raises(ValidationError):
        reply_target(platform_data={"platform": "nowhere", "robot_code": "r"})

    class ElsewhereReplyData(PlatformReplyData):
        platform: Literal["elsewhere"] = "elsewhere"  # type: ignore[assignment]

    with pytest.raises(TypeError, match="dingtalk target has no ElsewhereReplyData"):
        target.data_as(ElsewhereReplyData)


def test_every_platform_name_is_declared_once_and_registered_once() -> None:
    assert set(REGISTRY) == set(Platform) == set(PLATFORM_CONFIGS)
    assert get_args(AnyPlatformConfig) == tuple(e.config for e in REGISTRY.values())
    with pytest.raises(ValueError, match="registered twice"):
        registry_of(
            PlatformModels(DingTalkConfig, DingTalkReplyData),
            PlatformModels(DingTalkConfig, DingTalkReplyData),
        )


def test_an_ldap_filter_naming_the_staff_id_reads_as_the_employee_id() -> None:
    public = {
        "mode": "ldap",
        "url": "ldap://directory",
        "bind_dn": "cn=admin",
        "base_dn": "dc=corp",
        "user_filter": "(|(employeeNumber={staff_id})(uid={user_id}))",
    }
    mapping = parse_user_mapping(public, {"bind_password": "pw"})
    assert isinstance(mapping, LdapUserMapping)
    assert mapping.user_filter == "(|(employeeNumber={employee_id})(uid={user_id}))"
