"""End to end: a run that cannot succeed is dead-lettered and its user told; the operator fixes
the cause and replays the letter through the admin API; the user then gets exactly one new
answer (a new card) in the same chat, and the failed card stays as it was."""

import asyncio
import time
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from imgate_common.db.engine import create_engine
from imgate_common.messages import run_id_for
from tests.e2e.conftest import CLIENT_ID, Running, conversation, send
from tests.router.test_identity_mappers import ldap_mapping

pytestmark = pytest.mark.e2e

# What an agent's stored key looks like after the secret keys were replaced without re-encrypting.
FOREIGN_TOKEN = "gAAAAABoNotATokenTheseKeysCanRead=="


def store_unreadable_key(running: Running, agent_id: int) -> None:
    async def write() -> None:
        engine = create_engine(running.fleet.database_url)
        try:
            async with engine.begin() as conn:
                await conn.execute(
                    text("UPDATE agents SET api_key_enc = :token WHERE id = :id"),
                    {"token": FOREIGN_TOKEN, "id": agent_id},
                )
        finally:
            await engine.dispose()

    asyncio.run(write())


def answers(running: Running, conversation_id: str, count: int, timeout: float = 60) -> list[dict[str, Any]]:
    """Wait until the chat holds `count` bot answers, each ended: a card finished (3) or
    failed (5; a failed card's stream ends with isError, not finalized), or a plain reply."""
    deadline = time.monotonic() + timeout
    found: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        found = [i for i in conversation(running, CLIENT_ID, conversation_id)["items"] if i["kind"] != "user"]
        ended = all(
            a["kind"] != "card" or (a["finalized"] and a["flow_status"] == "3") or a["flow_status"] == "5"
            for a in found
        )
        if len(found) >= count and ended:
            return found
        time.sleep(0.1)
    raise AssertionError(f"expected {count} ended answers, have {found}\n{running.logs()}")


def letters_of(api: httpx.Client, channel_id: int) -> list[dict[str, Any]]:
    response = api.get("/api/v1/dead-letters", params={"channel_id": channel_id})
    response.raise_for_status()
    return list(response.json())


def test_a_dead_lettered_run_replayed_once_fixed_gives_the_user_one_new_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    channel_id = channel["id"]
    with running.admin_api() as api:
        agent = api.post(
            "/api/v1/agents",
            json={
                "name": "stale-key",
                "provider": "openai",
                "model": "scripted",
                "base_url": running.model_url,
                "api_key": "sk-stale",
            },
        )
        assert agent.status_code == 201, agent.text
        agent_id = agent.json()["id"]
        store_unreadable_key(running, agent_id)  # the secret keys changed under it
        moved = api.patch(f"/api/v1/channels/{channel_id}", json={"default_agent_id": agent_id})
        assert moved.status_code == 200, moved.text

        sent = send(running, CLIENT_ID, text="Is the report ready?", sender_staff_id="grace")
        cid = sent["conversation_id"]
        [failed] = answers(running, cid, 1)
        assert failed["kind"] == "card" and failed["flow_status"] == "5", failed
        [letter] = letters_of(api, channel_id)
        assert letter["consumer"] == "agent-runner" and letter["category"] == "misconfigured"
        assert letter["run_id"] == run_id_for("dingtalk", channel_id, sent["msg_id"])
        requests_before = len(running.model.requests)

        # The cause, fixed: the key entered again. Then the letter replayed.
        fixed = api.patch(f"/api/v1/agents/{agent_id}", json={"api_key": "sk-entered-again"})
        assert fixed.status_code == 200, fixed.text
        replayed = api.post(f"/api/v1/dead-letters/{letter['seq']}/replay")
        assert replayed.status_code == 200, replayed.text
        outcome = replayed.json()
        assert outcome["replay"] == 1 and outcome["admission"] == "start"
        assert outcome["run_id"] == run_id_for("dingtalk", channel_id, sent["msg_id"], 1)

        old, new = answers(running, cid, 2)
        assert old == failed, "the failure stays as it was"
        assert new["kind"] == "card" and new["finalized"] and new["flow_status"] == "3", new
        answer = running.model.answers[-1]
        assert new["content"] == answer and "Is the report ready?" in answer
        assert len(running.model.requests) == requests_before + 1, "the model was asked once"
        time.sleep(3)  # nothing else arrives: no second answer, no repeat of the failure
        items = conversation(running, CLIENT_ID, cid)["items"]
        assert [i["kind"] for i in items] == ["user", "card", "card"], items
        assert letters_of(api, channel_id) == []
        # The channel goes back to its own agent for the module's other tests.
        api.patch(f"/api/v1/channels/{channel_id}", json={"default_agent_id": channel["default_agent_id"]})


def test_a_dead_lettered_message_replayed_once_fixed_gives_the_user_one_new_answer(
    running: Running, channel: dict[str, Any]
) -> None:
    """The router gave up on the message (the channel's LDAP filter names an unknown
    placeholder); the replay goes through the router again, under the next replay number."""
    channel_id = channel["id"]
    broken = ldap_mapping("ldap://127.0.0.1:9", user_filter="(employeeNumber={badge_number})")
    with running.admin_api() as api:
        patched = api.patch(f"/api/v1/channels/{channel_id}", json={"user_mapping": broken})
        assert patched.status_code == 200, patched.text
        sent = send(running, CLIENT_ID, text="Where is my parcel?", sender_staff_id="heidi")
        cid = sent["conversation_id"]
        [failed] = answers(running, cid, 1)
        assert failed["flow_status"] == "5", failed
        [letter] = letters_of(api, channel_id)
        assert letter["consumer"].startswith("router-p") and letter["category"] == "misconfigured"
        requests_before = len(running.model.requests)

        fixed = api.patch(f"/api/v1/channels/{channel_id}", json={"user_mapping": {"mode": "auto"}})
        assert fixed.status_code == 200, fixed.text
        replayed = api.post(f"/api/v1/dead-letters/{letter['seq']}/replay")
        assert replayed.status_code == 200, replayed.text
        assert replayed.json()["run_id"] == run_id_for("dingtalk", channel_id, sent["msg_id"], 1)

        old, new = answers(running, cid, 2)
        assert old == failed, "the failure stays as it was"
        assert new["kind"] == "card" and new["flow_status"] == "3", new
        assert new["content"] == running.model.answers[-1] and "Where is my parcel?" in new["content"]
        assert len(running.model.requests) == requests_before + 1
        time.sleep(3)
        items = conversation(running, CLIENT_ID, cid)["items"]
        assert [i["kind"] for i in items] == ["user", "card", "card"], items
        assert letters_of(api, channel_id) == []
