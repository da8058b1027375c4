"""End to end: /stop mid-answer, and a runner killed mid-stream still yields exactly one answer."""

import time
from typing import Any

import httpx
import pytest

from imgate_common.wording import say
from tests.e2e.conftest import CLIENT_ID, Running, send, wait_for_items

pytestmark = pytest.mark.e2e

LONG = " ".join(f"w{i}" for i in range(80))


def streaming_started(running: Running, conversation_id: str, chars: int = 1) -> bool:
    items = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/conversations/{conversation_id}").json()["items"]
    cards = [i for i in items if i["kind"] == "card"]
    return bool(cards) and any(
        u["len"] >= chars and (u["op"] == "full" or (u["op"] == "update" and u["flow_status"] == "2"))
        for u in cards[-1]["updates"]
    )


def wait(check: Any, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def test_stop_ends_the_answer_and_keeps_what_was_written(running: Running, channel: dict[str, Any]) -> None:
    running.model.word_delay_s = 0.1
    running.model.answer = lambda messages: LONG
    try:
        sent = send(running, CLIENT_ID, text="Tell me everything.", sender_staff_id="erin")
        cid = sent["conversation_id"]
        wait(lambda: streaming_started(running, cid, chars=len("w0 w1 w2")))
        send(running, CLIENT_ID, text="/stop", sender_staff_id="erin")
        [card] = wait_for_items(running, CLIENT_ID, cid, 1)
    finally:
        running.model.word_delay_s = 0.03
        running.model.answer = type(running.model)().answer
    assert card["kind"] == "card" and card["finalized"] and card["flow_status"] == "3"
    assert card["content"].startswith("w0 w1 w2") and card["content"].endswith(say("stopped", "zh-CN"))
    assert "w79" not in card["content"]
    items = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/conversations/{cid}").json()["items"]
    assert [i["kind"] for i in items if i["kind"] != "user"] == ["card"], "one answer, no extra replies"


def test_runner_killed_mid_stream_still_gives_exactly_one_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    running.model.word_delay_s = 0.1
    running.model.answer = lambda messages: LONG
    try:
        sent = send(running, CLIENT_ID, text="A long answer, please.", sender_staff_id="frank")
        cid = sent["conversation_id"]
        wait(lambda: streaming_started(running, cid))
        requests_before = len(running.model.requests)
        running.crash_and_restart("agent-runner")
        [card] = wait_for_items(running, CLIENT_ID, cid, 1, timeout=60)
    finally:
        running.model.word_delay_s = 0.03
        running.model.answer = type(running.model)().answer
    assert card["content"] == LONG
    assert card["flow_status"] == "3"
    assert len(running.model.requests) == requests_before + 1, "the run is redone once"
    items = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/conversations/{cid}").json()["items"]
    assert [i["kind"] for i in items if i["kind"] != "user"] == ["card"], "exactly one answer"
    finals = [u for u in card["updates"] if u.get("finalize")]
    assert len(finals) == 1, f"finalized once: {card['updates']}"


def test_quick_messages_are_answered_in_order_each_seeing_the_previous_turns(
    running: Running, channel: dict[str, Any]
) -> None:
    first = send(running, CLIENT_ID, text="Q1", sender_staff_id="grace")
    for text in ("Q2", "Q3"):
        send(running, CLIENT_ID, text=text, sender_staff_id="grace")
    answers = wait_for_items(running, CLIENT_ID, first["conversation_id"], 3, timeout=60)
    assert [a["kind"] for a in answers] == ["card", "card", "card"]
    prompts = [
        [m["content"] for m in request["messages"] if m["role"] == "user"]
        for request in running.model.requests
        if any(m["content"] in ("Q1", "Q2", "Q3") for m in request["messages"])
    ]
    assert prompts == [["Q1"], ["Q1", "Q2"], ["Q1", "Q2", "Q3"]], "in order, each sees the turns before"
    assert [a["content"] for a in answers] == [
        "Answer 1: you said «Q1» after 0 earlier turns.",
        "Answer 2: you said «Q2» after 1 earlier turns.",
        "Answer 3: you said «Q3» after 2 earlier turns.",
    ]


def test_the_same_message_three_times_with_a_router_crash_gives_one_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    sent = send(running, CLIENT_ID, text="Only once, please.", sender_staff_id="ivan")
    running.crash_and_restart("router")  # mid-routing or just after: either way nothing may double
    for _ in range(2):
        response = httpx.post(f"{running.imsim}/sim/apps/{CLIENT_ID}/messages/{sent['msg_id']}/redeliver")
        assert response.status_code == 200, response.text
    [answer] = wait_for_items(running, CLIENT_ID, sent["conversation_id"], 1, timeout=60)
    time.sleep(2)  # room for a wrongly doubled answer to show up
    items = httpx.get(f"{running.imsim}/sim/apps/{CLIENT_ID}/conversations/{sent['conversation_id']}").json()
    assert [i["kind"] for i in items["items"] if i["kind"] != "user"] == ["card"]
    asked = [r for r in running.model.requests if r["messages"][-1]["content"] == "Only once, please."]
    assert len(asked) == 1, "exactly one run"
    assert answer["content"] == "Answer 1: you said «Only once, please.» after 0 earlier turns."
