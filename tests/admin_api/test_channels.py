"""Creating channels: per-platform validation, encrypted secrets, masks, conflicts, control START."""

import asyncio
import time

import httpx
import pytest
from nats.aio.client import Client as NATS
from sqlmodel import col, select
from structlog.testing import capture_logs

from imgate_admin.deps import Resources
from imgate_common.db.models import AuditEntry, Channel
from imgate_common.messages import ControlAction
from imgate_common.secrets import MASK, SecretBox

from .conftest import CLIENT_SECRET, ControlListener, agent_body, channel_body, own


async def test_create_a_channel_with_its_secret_encrypted_and_masked(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    created = await client.post("/api/v1/channels", json=channel_body())
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["config"] == {
        "client_id": "ding-app-key",
        "client_secret": MASK,
        "openapi_endpoint": "http://127.0.0.1:9999",
        "robot_code": "ding-app-key",
    }
    assert (channel["platform"], channel["enabled"], channel["session_scope"]) == (
        "dingtalk",
        True,
        "conversation",
    )
    assert channel["default_agent_id"] is None
    assert channel["status"]["state"] == "disconnected"

    fetched = await client.get(f"/api/v1/channels/{channel['id']}")
    assert fetched.status_code == 200
    assert fetched.json()["config"]["client_secret"] == MASK
    listed = await client.get("/api/v1/channels")
    assert [c["config"]["client_secret"] for c in own(listed.json())] == [MASK]
    for response in (created, fetched, listed):
        assert CLIENT_SECRET not in response.text

    async with resources.sessions() as session:
        row = await session.get(Channel, channel["id"])
        audit = (
            await session.exec(select(AuditEntry).where(col(AuditEntry.action) == "channel.create"))
        ).all()
    assert row is not None and row.secrets_enc
    assert "client_secret" not in row.config
    assert CLIENT_SECRET not in row.secrets_enc
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": CLIENT_SECRET}
    assert [(a.actor, a.target) for a in audit] == [("admin", f"channel:{channel['id']}")]
    assert audit[0].detail["config"]["client_id"] == "ding-app-key"
    assert CLIENT_SECRET not in str(audit[0].detail)


async def test_a_duplicate_channel_name_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/channels", json=channel_body("twin"))).status_code == 201
    response = await client.post("/api/v1/channels", json=channel_body("twin", enabled=False))
    assert response.status_code == 409
    assert response.json()["error"] == {
        "code": "conflict",
        "message": "a channel named 'twin' already exists",
    }
    assert len(own((await client.get("/api/v1/channels")).json())) == 1


async def test_concurrent_creates_of_one_name_give_one_201_and_one_409(client: httpx.AsyncClient) -> None:
    body = channel_body("racer", enabled=False)
    responses = await asyncio.gather(*(client.post("/api/v1/channels", json=body) for _ in range(2)))
    assert sorted(r.status_code for r in responses) == [201, 409]


async def test_a_missing_client_id_is_422_without_echoing_the_secret(client: httpx.AsyncClient) -> None:
    body = channel_body()
    del body["config"]["client_id"]
    response = await client.post("/api/v1/channels", json=body)
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert error["message"] == "config.client_id: Field required"
    assert CLIENT_SECRET not in response.text


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"config": {"openapi_endpoint": "ftp://files.example.com"}}, "config.openapi_endpoint"),
        ({"config": {"client_secret": ""}}, "config.client_secret"),
        ({"config": {"unknown_knob": 1}}, "config.unknown_knob"),
        ({"platform": "icq"}, "platform"),
        ({"session_scope": "tenant"}, "session_scope"),
    ],
)
async def test_invalid_channel_bodies_are_422(client: httpx.AsyncClient, change: dict, field: str) -> None:
    response = await client.post("/api/v1/channels", json=channel_body(**change))
    assert response.status_code == 422
    assert field in [d["loc"] for d in response.json()["error"]["details"]]
    assert CLIENT_SECRET not in response.text


async def test_a_feishu_channel_validates_from_the_registry_with_its_secret_masked(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    body = {
        "name": "feishu-bot",
        "platform": "feishu",
        "config": {"app_id": "cli_a1b2", "app_secret": CLIENT_SECRET, "domain": "https://open.larksuite.com"},
        "enabled": False,
    }
    created = await client.post("/api/v1/channels", json=body)
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["platform"] == "feishu"
    assert channel["config"] == {
        "app_id": "cli_a1b2",
        "app_secret": MASK,
        "domain": "https://open.larksuite.com",
    }
    assert CLIENT_SECRET not in created.text
    async with resources.sessions() as session:
        row = await session.get(Channel, channel["id"])
    assert row is not None and box.decrypt_json(row.secrets_enc) == {"app_secret": CLIENT_SECRET}


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"app_id": "cli_a", "app_secret": CLIENT_SECRET, "domain": "open.feishu.cn"}, "config.domain"),
        ({"app_id": "cli_a", "app_secret": ""}, "config.app_secret"),
        ({"client_id": "ding-app-key", "client_secret": CLIENT_SECRET}, "config.app_id"),
    ],
)
async def test_an_invalid_feishu_config_is_422(client: httpx.AsyncClient, config: dict, field: str) -> None:
    body = {"name": "feishu-bad", "platform": "feishu", "config": config, "enabled": False}
    response = await client.post("/api/v1/channels", json=body)
    assert response.status_code == 422
    assert field in [d["loc"] for d in response.json()["error"]["details"]]
    assert CLIENT_SECRET not in response.text


async def test_an_unknown_default_agent_is_400(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/channels", json=channel_body(default_agent_id=999))
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "invalid_request"
    assert "999" in response.json()["error"]["message"]
    assert own((await client.get("/api/v1/channels")).json()) == []


async def test_a_known_default_agent_is_linked(client: httpx.AsyncClient) -> None:
    agent = (await client.post("/api/v1/agents", json=agent_body())).json()
    response = await client.post(
        "/api/v1/channels", json=channel_body(default_agent_id=agent["id"], session_scope="user")
    )
    assert response.status_code == 201
    assert (response.json()["default_agent_id"], response.json()["session_scope"]) == (agent["id"], "user")


async def test_an_unknown_channel_is_404(client: httpx.AsyncClient) -> None:
    for path in ("/api/v1/channels/777", "/api/v1/channels/777/status"):
        response = await client.get(path)
        assert response.status_code == 404
        assert response.json()["error"]["code"] == "not_found"


async def test_creating_a_channel_sends_start_to_its_connector(
    client: httpx.AsyncClient, nats_client: NATS, first_channel_id: int
) -> None:
    listener = ControlListener(first_channel_id)
    await listener.listen(nats_client)
    with capture_logs() as logs:
        response = await client.post("/api/v1/channels", json=channel_body())
    assert response.status_code == 201
    channel_id = response.json()["id"]
    assert channel_id == first_channel_id
    [request] = listener.for_channel(channel_id)
    assert request.action == ControlAction.START
    assert request.requested_by == "admin-api"
    answered = [e for e in logs if e["event"] == "channel_control_answered" and e["channel_id"] == channel_id]
    assert answered and answered[0]["state"] == "connecting"


async def test_an_unanswered_start_still_creates_the_channel(
    client: httpx.AsyncClient, nats_client: NATS, resources: Resources, first_channel_id: int
) -> None:
    listener = ControlListener(first_channel_id, answer=False)  # a connector that never replies
    await listener.listen(nats_client)
    started = time.monotonic()
    with capture_logs() as logs:
        response = await client.post("/api/v1/channels", json=channel_body())
    elapsed = time.monotonic() - started
    assert response.status_code == 201
    channel_id = response.json()["id"]
    assert listener.for_channel(channel_id)
    assert resources.settings.control_timeout_s <= elapsed < resources.settings.control_timeout_s + 2
    assert [e["event"] for e in logs if e.get("channel_id") == channel_id and "control" in e["event"]] == [
        "channel_control_timeout"
    ]
    assert (await client.get(f"/api/v1/channels/{channel_id}")).status_code == 200


async def test_a_disabled_channel_gets_no_start(
    client: httpx.AsyncClient, nats_client: NATS, first_channel_id: int
) -> None:
    listener = ControlListener(first_channel_id)
    await listener.listen(nats_client)
    response = await client.post("/api/v1/channels", json=channel_body(enabled=False))
    assert response.status_code == 201
    await asyncio.sleep(0.2)  # any stray request would have arrived by now
    assert listener.for_channel(response.json()["id"]) == []
    assert response.json()["status"]["state"] == "disabled"
