"""/api/v1/dead-letters against a private nats-server: list, read, replay (audited), discard."""

import base64
from collections.abc import AsyncIterator

import httpx
import pytest
from nats.js import JetStreamContext

from imgate_admin.settings import AdminSettings
from imgate_common.bus import DEAD_LETTERS_STREAM, INBOUND_STREAM, MSG_ID_HEADER, dead_letter_subject
from imgate_common.messages import MAX_REPLAYS, DeadLetter, InboundMessage, run_id_for
from imgate_common.publish import jetstream_publisher
from tests.router.conftest import inbound
from tests.support.nats_server import fresh_streams

TRACEPARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


@pytest.fixture
def database_url(tmp_path: object) -> str:
    """SQLite alone: only the audit rows touch the database here."""
    return f"sqlite+aiosqlite:///{tmp_path}/admin.db"


@pytest.fixture
async def js(private_nats: str) -> AsyncIterator[JetStreamContext]:
    async with fresh_streams(private_nats) as js:
        yield js


@pytest.fixture
async def settings(settings: AdminSettings, private_nats: str, js: JetStreamContext) -> AdminSettings:
    return settings.model_copy(update={"nats_url": private_nats})


async def file_letter(js: JetStreamContext, channel_id: int, body: bytes, n: int) -> None:
    letter = DeadLetter(
        consumer="router-p3",
        stream=INBOUND_STREAM,
        subject=f"im.inbound.dingtalk.{channel_id}.3",
        stream_seq=n,
        headers={MSG_ID_HEADER: f"dingtalk:{channel_id}:m{n}", "traceparent": TRACEPARENT},
        data_b64=base64.b64encode(body).decode(),
        reason="LDAP user_filter '(uid={uid})' cannot be filled",
        error_type="MapperMisconfigured",
        category="misconfigured",
        permanent=True,
        deliveries=1,
        channel_id=channel_id,
        run_id=f"run-{n}",
    )
    await jetstream_publisher(js)(dead_letter_subject("router-p3"), DEAD_LETTERS_STREAM, letter, f"dead:{n}")


async def test_letters_are_listed_newest_first_and_read_whole(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await file_letter(js, 5, b'{"text": "first"}', 1)
    await file_letter(js, 6, b'{"text": "' + b"x" * 900 + b'"}', 2)
    listed = await client.get("/api/v1/dead-letters")
    assert listed.status_code == 200 and listed.headers["X-Total-Count"] == "2"
    newest, oldest = listed.json()
    assert (newest["channel_id"], oldest["channel_id"]) == (6, 5)
    assert len(newest["body"]) == 500 and oldest["body"] == '{"text": "first"}'
    assert oldest["category"] == "misconfigured" and oldest["permanent"] is True
    only = await client.get("/api/v1/dead-letters", params={"channel_id": 5})
    assert [d["run_id"] for d in only.json()] == ["run-1"]
    whole = (await client.get(f"/api/v1/dead-letters/{newest['seq']}")).json()
    assert len(whole["body"]) == 900 + 12 and whole["headers"]["traceparent"] == TRACEPARENT
    assert (await client.get("/api/v1/dead-letters/999")).status_code == 404


async def test_a_replay_publishes_the_message_again_under_a_fresh_id_audited_and_removes_it(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    body = b'{"text": "hello \xe4\xbd\xa0\xe5\xa5\xbd"}'
    await file_letter(js, 5, body, 1)
    [letter] = (await client.get("/api/v1/dead-letters")).json()
    replayed = await client.post(f"/api/v1/dead-letters/{letter['seq']}/replay")
    assert replayed.status_code == 200
    assert replayed.json()["subject"] == "im.inbound.dingtalk.5.3"
    again = await js.get_last_msg(INBOUND_STREAM, "im.inbound.dingtalk.5.3")
    assert again.data == body
    assert again.headers is not None and again.headers["traceparent"] == TRACEPARENT
    assert again.headers[MSG_ID_HEADER] == replayed.json()["msg_id"] != "dingtalk:5:m1"
    assert (await client.get(f"/api/v1/dead-letters/{letter['seq']}")).status_code == 404
    [entry] = (await client.get("/api/v1/audit", params={"action": "dead_letter.replay"})).json()
    assert entry["target"] == f"dead_letter:{letter['seq']}" and entry["detail"]["run_id"] == "run-1"


async def test_a_discarded_letter_is_gone_and_audited(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    await file_letter(js, 5, b"{}", 1)
    [letter] = (await client.get("/api/v1/dead-letters")).json()
    assert (await client.delete(f"/api/v1/dead-letters/{letter['seq']}")).status_code == 204
    assert (await client.get("/api/v1/dead-letters")).json() == []
    assert (await client.delete(f"/api/v1/dead-letters/{letter['seq']}")).status_code == 404
    [entry] = (await client.get("/api/v1/audit", params={"action": "dead_letter.discard"})).json()
    assert entry["detail"]["channel_id"] == 5
    assert (await js.stream_info(INBOUND_STREAM)).state.messages == 0, "nothing was replayed"


async def test_a_replayed_user_message_is_a_new_attempt_with_its_own_run(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    """The body goes back whole with the next replay number; the run that answers it has an
    id of its own (a new card), and the same replay sent twice is one message."""
    message = inbound(5, "m1", "hello")
    await file_letter(js, 5, message.model_dump_json().encode(), 1)
    [letter] = (await client.get("/api/v1/dead-letters")).json()
    replayed = (await client.post(f"/api/v1/dead-letters/{letter['seq']}/replay")).json()
    first = run_id_for("dingtalk", 5, "m1", 1)
    assert (replayed["replay"], replayed["run_id"]) == (1, first)
    assert first != run_id_for("dingtalk", 5, "m1")
    assert replayed["msg_id"] == "dingtalk:5:m1:replay:1"
    again = await js.get_last_msg(INBOUND_STREAM, "im.inbound.dingtalk.5.3")
    sent = InboundMessage.model_validate_json(again.data or b"")
    assert sent.replay == 1 and sent.raw == message.raw and sent.message_id == "m1"
    assert again.headers is not None and again.headers["traceparent"] == TRACEPARENT
    [entry] = (await client.get("/api/v1/audit", params={"action": "dead_letter.replay"})).json()
    assert entry["detail"]["replay"] == 1 and entry["detail"]["replay_run_id"] == first
    # Dead-lettered again (the cause was not fixed): the next replay is the second.
    await file_letter(js, 5, again.data or b"", 2)
    [letter] = (await client.get("/api/v1/dead-letters")).json()
    second = (await client.post(f"/api/v1/dead-letters/{letter['seq']}/replay")).json()
    assert (second["replay"], second["run_id"]) == (2, run_id_for("dingtalk", 5, "m1", 2))


async def test_a_message_replayed_too_often_is_refused_and_its_letter_kept(
    client: httpx.AsyncClient, js: JetStreamContext
) -> None:
    worn = inbound(5, "m1", "hello").model_copy(update={"replay": MAX_REPLAYS})
    await file_letter(js, 5, worn.model_dump_json().encode(), 1)
    [letter] = (await client.get("/api/v1/dead-letters")).json()
    refused = await client.post(f"/api/v1/dead-letters/{letter['seq']}/replay")
    assert refused.status_code == 409 and f"at most {MAX_REPLAYS}" in refused.text
    assert (await client.get(f"/api/v1/dead-letters/{letter['seq']}")).status_code == 200
    assert (await js.stream_info(INBOUND_STREAM)).state.messages == 0
    assert (await client.get("/api/v1/audit", params={"action": "dead_letter.replay"})).json() == []
