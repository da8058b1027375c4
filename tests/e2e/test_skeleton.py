"""End to end: a message becomes a streamed card; turns, /new, bad input; the local model for real."""

from typing import Any

import httpx
import pytest

from imgate_common.errors import FailureCategory
from imgate_common.wording import failure_sentence
from tests.e2e.conftest import CLIENT_ID, LOCAL_CLIENT_ID, LOCAL_CLIENT_SECRET, Running, send, wait_for_items

pytestmark = pytest.mark.e2e


def shows_text(update: dict[str, Any]) -> bool:
    """A card update that shows answer text: streaming, the switch to "inputing" (flowStatus 2)
    that carries the first text, or the final (flowStatus 3) that carries the whole answer."""
    shown = update["op"] == "full" or (update["op"] == "update" and update["flow_status"] in ("2", "3"))
    return shown and bool(update["len"])


def test_message_becomes_a_streamed_card_with_the_model_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    sent = send(running, CLIENT_ID, text="What can you do?", sender_staff_id="alice")
    [card] = wait_for_items(running, CLIENT_ID, sent["conversation_id"], 1)
    assert card["kind"] == "card"
    assert card["content"] == running.model.answers[-1]
    assert card["flow_status"] == "3" and not card["error"]
    lengths = [u["len"] for u in card["updates"] if shows_text(u)]
    assert len(lengths) >= 2 and lengths == sorted(lengths), f"text must grow step by step: {card['updates']}"
    acks = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/acks").json()
    assert [a["code"] for a in acks if a["msg_id"] == sent["msg_id"]] == [200]


def test_second_turn_sees_the_first_and_new_resets(running: Running, channel: dict[str, Any]) -> None:
    first = send(running, CLIENT_ID, text="My name is Bob.", sender_staff_id="bob")
    cid = first["conversation_id"]
    wait_for_items(running, CLIENT_ID, cid, 1)
    first_answer = running.model.answers[-1]
    send(running, CLIENT_ID, text="What is my name?", sender_staff_id="bob")
    answers = wait_for_items(running, CLIENT_ID, cid, 2)
    assert answers[1]["content"] == running.model.answers[-1]
    history = [
        (m["role"], m["content"]) for m in running.model.requests[-1]["messages"] if m["role"] != "system"
    ]
    assert history == [
        ("user", "My name is Bob."),
        ("assistant", first_answer),
        ("user", "What is my name?"),
    ]

    send(running, CLIENT_ID, text="/new", sender_staff_id="bob")
    answers = wait_for_items(running, CLIENT_ID, cid, 3)
    assert answers[2]["kind"] == "text" and answers[2]["text"] == "已开始新对话。有什么可以帮助您的？"
    send(running, CLIENT_ID, text="Fresh start?", sender_staff_id="bob")
    wait_for_items(running, CLIENT_ID, cid, 4)
    history = [
        (m["role"], m["content"]) for m in running.model.requests[-1]["messages"] if m["role"] != "system"
    ]
    assert history == [("user", "Fresh start?")]


def test_bad_input_is_acked_and_answered_never_retried(running: Running, channel: dict[str, Any]) -> None:
    broken = send(running, CLIENT_ID, raw_data="{this is not json", sender_staff_id="carol")
    picture = send(
        running,
        CLIENT_ID,
        msgtype="video",
        content={"downloadCode": "abc", "duration": 3000},
        sender_staff_id="carol",
    )
    [reply] = wait_for_items(running, CLIENT_ID, picture["conversation_id"], 1)
    assert reply["kind"] == "text"
    assert reply["text"] == failure_sentence(FailureCategory.UNSUPPORTED_MESSAGE, "zh-CN")  # the channel's
    acks = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/acks").json()
    assert [a["code"] for a in acks if a["msg_id"] == broken["msg_id"]] == [200]
    assert [a["code"] for a in acks if a["msg_id"] == picture["msg_id"]] == [200]
    deliveries = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/deliveries").json()
    assert len([d for d in deliveries if d["msg_id"] == broken["msg_id"]]) == 1, "no redelivery storm"
    running.stack.check_alive()


@pytest.mark.model
def test_local_model_answers_for_real(running: Running) -> None:
    with running.admin_api() as api:
        agent = api.post(
            "/api/v1/agents", json={"name": "local-e2e", "provider": "local", "max_output_tokens": 40}
        ).json()
        channel = api.post(
            "/api/v1/channels",
            json={
                "name": "e2e-local",
                "platform": "dingtalk",
                "config": {"client_id": LOCAL_CLIENT_ID, "client_secret": LOCAL_CLIENT_SECRET},
                "default_agent_id": agent["id"],
            },
        )
        assert channel.status_code == 201, channel.text
    sent = send(running, LOCAL_CLIENT_ID, text="What can you do?", sender_staff_id="dave")
    [card] = wait_for_items(running, LOCAL_CLIENT_ID, sent["conversation_id"], 1, timeout=120)
    assert card["kind"] == "card" and card["flow_status"] == "3"
    assert card["content"].strip(), "the local model wrote nothing"
    growing = [u["len"] for u in card["updates"] if shows_text(u)]
    assert growing[-1] == len(card["content"])
