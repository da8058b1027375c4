"""Two routers and two runners share one conversation's traffic and keep its order."""

from typing import Any

import pytest

from tests.e2e.conftest import CLIENT_ID, Running, send, wait_for_items

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def doubled(running: Running) -> Running:
    running.fleet.start_replica("router")
    running.fleet.start_replica("agent-runner")
    return running


def test_two_routers_and_two_runners_keep_one_conversation_in_order(
    doubled: Running, channel: dict[str, Any]
) -> None:
    texts = [f"R{i}" for i in range(1, 6)]
    first = send(doubled, CLIENT_ID, text=texts[0], sender_staff_id="heidi")
    for text in texts[1:]:
        send(doubled, CLIENT_ID, text=text, sender_staff_id="heidi")
    answers = wait_for_items(doubled, CLIENT_ID, first["conversation_id"], len(texts), timeout=90)
    assert [a["kind"] for a in answers] == ["card"] * len(texts), "one answer each, nothing doubled"
    prompts = [
        [m["content"] for m in request["messages"] if m["role"] == "user"]
        for request in doubled.model.requests
        if any(m["content"] in texts for m in request["messages"])
    ]
    assert prompts == [texts[: i + 1] for i in range(len(texts))], (
        "in arrival order, each sees the earlier turns"
    )
