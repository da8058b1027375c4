"""The bus contract: versioned models, validated on both ends."""

import json
import uuid

import pytest
from pydantic import ValidationError

from imgate_common.errors import FailureCategory
from imgate_common.messages import (
    MAX_REPLAYS,
    REPLY_EVENT,
    RUN_NAMESPACE,
    ChannelState,
    ChannelStatus,
    Notice,
    ReplyTarget,
    RunCompleted,
    RunDelta,
    RunFailed,
    RunRequest,
    run_id_for,
    utcnow,
)
from tests.support.factories import reply_target, run_request


def target() -> ReplyTarget:
    return reply_target()


def test_reply_events_parse_back_into_their_own_class() -> None:
    events = [
        RunDelta(run_id="r", channel_id=1, seq=1, target=target(), text="He", length=2),
        RunCompleted(run_id="r", channel_id=1, seq=2, target=target(), text="Hello"),
        RunFailed(run_id="r", channel_id=1, target=target(), category=FailureCategory.TIMED_OUT, text="slow"),
        Notice(run_id="r", channel_id=1, target=target(), text="hi"),
    ]
    for event in events:
        parsed = REPLY_EVENT.validate_json(event.model_dump_json())
        assert type(parsed) is type(event)
        assert parsed == event


def test_unknown_event_kind_is_rejected() -> None:
    raw = json.loads(Notice(run_id="r", channel_id=1, target=target(), text="x").model_dump_json())
    raw["kind"] = "exploded"
    with pytest.raises(ValidationError):
        REPLY_EVENT.validate_python(raw)


def test_future_contract_version_is_rejected_not_misread() -> None:
    request = RunRequest(
        run_id="r",
        channel_id=1,
        conversation_id="c",
        agent_id=None,
        user_id=1,
        user_message_id=1,
        text="hi",
        target=target(),
    )
    raw = json.loads(request.model_dump_json())
    raw["v"] = 2
    with pytest.raises(ValidationError):
        RunRequest.model_validate(raw)


def test_extra_fields_from_newer_producers_are_tolerated() -> None:
    raw = json.loads(Notice(run_id="r", channel_id=1, target=target(), text="x").model_dump_json())
    raw["added_later"] = True
    assert REPLY_EVENT.validate_python(raw).text == "x"


def test_uptime_only_when_connected() -> None:
    now = utcnow()
    status = ChannelStatus(channel_id=1, state=ChannelState.CONNECTED, connected_at=now)
    assert status.uptime_seconds(now) == 0
    assert ChannelStatus(channel_id=1, state=ChannelState.DISCONNECTED).uptime_seconds() is None


def test_a_v1_body_without_a_replay_number_is_the_original_under_its_original_run_id() -> None:
    """Bodies from before replays had an identity parse as replay 0, whose run id is unchanged."""
    request = run_request(run_id=run_id_for("dingtalk", 3, "m1"))
    raw = json.loads(request.model_dump_json())
    del raw["replay"]
    assert RunRequest.model_validate(raw).replay == 0
    assert run_id_for("dingtalk", 3, "m1") == str(uuid.uuid5(RUN_NAMESPACE, "dingtalk:3:m1"))
    assert run_id_for("dingtalk", 3, "m1", 0) == run_id_for("dingtalk", 3, "m1")
    replays = {run_id_for("dingtalk", 3, "m1", n) for n in range(MAX_REPLAYS + 1)}
    assert len(replays) == MAX_REPLAYS + 1, "each replay is a run of its own"
    raw["replay"] = -1
    with pytest.raises(ValidationError):
        RunRequest.model_validate(raw)
