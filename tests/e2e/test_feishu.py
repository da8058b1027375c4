"""End to end on Feishu: a message becomes a CardKit card streamed to its final answer; a
redelivered event, /new, a follow-up while streaming, a burst under card limits, a group."""

import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from imgate_common.wording import say
from tests.e2e.conftest import FeishuApp, Running
from tests.support.openai_stub import default_answer

pytestmark = pytest.mark.e2e

LONG = " ".join(f"w{i}" for i in range(60))


def wait(check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def answer_to(text: str, turns: int = 0) -> str:
    return f"Answer {turns + 1}: you said «{text}» after {turns} earlier turns."


def asked(running: Running, text: str) -> int:
    """How many model requests ended with the user saying `text`."""
    return len([r for r in running.model.requests if r["messages"][-1]["content"] == text])


def streaming(feishu: FeishuApp, chat_id: str) -> bool:
    """The chat's last card shows some answer text and is still streaming."""
    cards = [a for a in feishu.answers(chat_id) if a["kind"] == "card"]
    return (
        bool(cards)
        and cards[-1]["state"] == "writing"
        and any(u["op"] == "content" and u["len"] for u in cards[-1]["updates"])
    )


@pytest.fixture
def slow_long_first(running: Running) -> Iterator[None]:
    """The model writes LONG, slowly, to a conversation's first message; default answers after."""

    def answer(messages: list[dict[str, Any]]) -> str:
        users = [m for m in messages if m["role"] == "user"]
        return LONG if len(users) == 1 else default_answer(messages)

    running.model.word_delay_s, running.model.answer = 0.1, answer
    yield
    running.model.word_delay_s, running.model.answer = 0.03, default_answer


def test_a_message_gets_a_card_streamed_from_thinking_to_its_final_answer(
    running: Running, feishu: FeishuApp
) -> None:
    sent = feishu.send("What can you do?", "alice")
    [card] = feishu.wait_for_answers(sent["chat_id"], 1)
    assert card["kind"] == "card" and card["reply_to"] == sent["message_id"]
    assert card["content"] == answer_to("What can you do?") == card["summary"]
    assert (card["state"], card["streaming_mode"], card["preview"]) == ("done", False, card["summary"])
    updates = card["updates"]
    assert updates[0]["op"] == "create" and updates[0]["streaming"], "opened streaming, thinking"
    texts = [u for u in updates if u["op"] == "content"]
    assert len(texts) >= 2, f"the answer streams: {updates}"
    assert [u["len"] for u in texts] == sorted(u["len"] for u in texts), "the text grows"
    assert texts[0]["extends"] is False, "the first text replaces the thinking line"
    assert all(u["extends"] for u in texts[1:]), "each update types on the one before"
    assert all(u["streaming"] for u in texts)
    assert updates[-1]["op"] == "update" and not updates[-1]["streaming"], "the final turns streaming off"
    acks = feishu.get(f"events/{sent['event_id']}")["acks"]
    assert [a["code"] for a in acks] == [200]


def test_a_redelivered_event_is_answered_once(running: Running, feishu: FeishuApp) -> None:
    sent = feishu.send("Only once, please.", "bob")
    for _ in range(2):
        feishu.post(f"events/{sent['event_id']}/redeliver")
    [card] = feishu.wait_for_answers(sent["chat_id"], 1)
    time.sleep(2)  # room for a wrongly doubled answer to show up
    assert [a["kind"] for a in feishu.answers(sent["chat_id"])] == ["card"]
    assert card["content"] == answer_to("Only once, please.")
    assert asked(running, "Only once, please.") == 1, "exactly one run"
    assert len(feishu.get(f"events/{sent['event_id']}")["deliveries"]) == 3


def test_new_starts_a_conversation_that_does_not_see_the_earlier_one(
    running: Running, feishu: FeishuApp
) -> None:
    chat = feishu.send("My name is Carol.", "carol")["chat_id"]
    feishu.wait_for_answers(chat, 1)
    feishu.send("What is my name?", "carol")
    feishu.wait_for_answers(chat, 2)
    history = [m["content"] for m in running.model.requests[-1]["messages"] if m["role"] == "user"]
    assert history == ["My name is Carol.", "What is my name?"]

    feishu.send("/new", "carol")
    answers = feishu.wait_for_answers(chat, 3)
    assert answers[2]["kind"] in ("text", "markdown") and answers[2]["text"] == say("new", "zh-CN")
    feishu.send("Fresh start?", "carol")
    answers = feishu.wait_for_answers(chat, 4)
    history = [
        (m["role"], m["content"]) for m in running.model.requests[-1]["messages"] if m["role"] != "system"
    ]
    assert history == [("user", "Fresh start?")]
    assert answers[3]["content"] == answer_to("Fresh start?")


def test_a_follow_up_while_streaming_is_queued_then_answered_in_order(
    running: Running, feishu: FeishuApp, slow_long_first: None
) -> None:
    first = feishu.send("Tell me a lot.", "dave")
    chat = first["chat_id"]
    wait(lambda: streaming(feishu, chat))
    second = feishu.send("And then?", "dave")
    answers = feishu.wait_for_answers(chat, 2)
    assert [(a["kind"], a["reply_to"]) for a in answers] == [
        ("card", first["message_id"]),
        ("card", second["message_id"]),
    ]
    assert answers[0]["content"] == LONG
    assert answers[1]["content"] == answer_to("And then?", turns=1), "it sees the first turn"
    queued = len(say("queued", "zh-CN", position=1))
    shown = [u for u in answers[1]["updates"] if u["op"] == "content"]
    assert shown and shown[0]["len"] == queued, f"the queued line first: {answers[1]['updates']}"
    first_done = answers[0]["updates"][-1]["at"]
    answering = [u for u in shown if u["len"] and u["len"] != queued]
    assert not answering or answering[0]["at"] >= first_done, "the second answer starts after the first"


def test_a_burst_under_card_limits_loses_and_doubles_nothing(running: Running, feishu: FeishuApp) -> None:
    feishu.faults(card_ops_limit=1, api_qps_limit=3)
    try:
        texts = {f"burst-{i}": f"Burst question {i}" for i in range(12)}
        sent = {user: feishu.send(text, user) for user, text in texts.items()}
        for user, message in sent.items():
            answers = feishu.wait_for_answers(message["chat_id"], 1, timeout=120)
            finished = [a for a in answers if a["kind"] == "card" and a["state"] == "done"]
            plain = [a for a in answers if a["kind"] in ("text", "markdown")]
            finals = [a.get("content") or a.get("text") for a in finished + plain]
            assert finals == [answer_to(texts[user])], f"exactly one visible final: {answers}"
        time.sleep(2)  # room for a late doubled answer
        for user, message in sent.items():
            assert asked(running, texts[user]) == 1, "each message is run once"
            later = feishu.answers(message["chat_id"])
            assert len([a for a in later if a["kind"] != "card" or a["state"] == "done"]) == 1, later
        outcomes = feishu.get("counters")["api_calls"]["by_outcome"]
        assert outcomes.get("card_rate_limited", 0) + outcomes.get("rate_limited", 0) > 0, "the limits bit"
    finally:
        feishu.faults(card_ops_limit=10, api_qps_limit=50)


def test_a_group_message_mentioning_the_bot_is_answered_in_the_group(
    running: Running, feishu: FeishuApp
) -> None:
    sent = feishu.send("What is new?", "erin", group="Team")
    group = feishu.get(f"chats/{sent['chat_id']}")
    assert group["type"] == "2"
    [card] = feishu.wait_for_answers(sent["chat_id"], 1)
    assert card["kind"] == "card" and card["reply_to"] == sent["message_id"]
    assert card["content"] == answer_to("What is new?"), "the bot's mention is not part of the question"

    # Someone else mentioned before the bot: the bot's mention is still told apart by its open_id.
    app, erin = feishu.get(""), feishu.get("users/erin")
    mentions = [
        {"key": "@_user_1", "id": {"open_id": "ou_alice", "user_id": "alice"}, "name": "Alice"},
        {"key": "@_user_2", "id": {"open_id": app["bot_open_id"]}, "name": app["name"]},
    ]
    message_id = f"om_{uuid.uuid4().hex}"
    message = {
        "message_id": message_id,
        "chat_id": sent["chat_id"],
        "chat_type": "group",
        "message_type": "text",
        "content": json.dumps({"text": "@_user_1 @_user_2 please check this"}),
        "mentions": mentions,
    }
    sender = {"sender_id": {k: erin[k] for k in ("open_id", "union_id", "user_id")}, "sender_type": "user"}
    raw_event = {
        "schema": "2.0",
        "header": {
            "event_id": uuid.uuid4().hex,
            "event_type": "im.message.receive_v1",
            "app_id": app["app_id"],
        },
        "event": {"sender": {**sender, "tenant_key": app["tenant_key"]}, "message": message},
    }
    feishu.post("messages", {"raw_event": raw_event, "sender_id": "erin", "group": "Team"})
    _, second = feishu.wait_for_answers(sent["chat_id"], 2)
    assert second["reply_to"] == message_id
    assert second["content"] == answer_to("@Alice please check this", turns=1)
