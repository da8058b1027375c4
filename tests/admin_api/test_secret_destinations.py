"""A stored secret goes only where it was configured to go (DESIGN.md, invariant 8): an update that
moves a destination keeps no stored secret, it needs the secret entered again. One test per
(secret, destination) pair; the refused update changes nothing, the accepted one stores both."""

from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from imgate_admin.deps import Resources
from imgate_common.db.models import Agent, AuditEntry, Channel
from imgate_common.secrets import MASK, SecretBox

from .conftest import API_KEY, CLIENT_SECRET, create_agent, create_channel

NEW_SECRET = "entered-again-" + "s" * 16
BIND_PASSWORD = "ldap-bind-" + "p" * 16
ERP_KEY = "erp-key-" + "k" * 16
KEPT = [MASK, "", None]  # the three ways an update keeps a stored secret (None: left out)
KEPT_IDS = ["mask", "empty", "left-out"]


def _with(body: dict[str, Any], name: str, kept_as: str | None) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != name} | ({} if kept_as is None else {name: kept_as})


async def _agent_row(resources: Resources, agent_id: int) -> Agent:
    async with resources.sessions() as session:
        row = await session.get(Agent, agent_id)
    assert row is not None
    return row


async def _channel_row(resources: Resources, channel_id: int) -> Channel:
    async with resources.sessions() as session:
        row = await session.get(Channel, channel_id)
    assert row is not None
    return row


async def _updates(resources: Resources, target: str) -> int:
    async with resources.sessions() as session:
        query = select(AuditEntry).where(
            col(AuditEntry.target) == target, col(AuditEntry.action).like("%.update")
        )
        return len((await session.exec(query)).all())


def _refused(response: httpx.Response, loc: str, moved: str) -> None:
    assert response.status_code == 422, response.text
    details = response.json()["error"]["details"]
    assert [d["loc"] for d in details] == [loc]
    assert details[0]["msg"].startswith(f"{moved} changed: enter ") and "again" in details[0]["msg"]


# --- agent: api_key ↔ base_url (and provider) ---------------------------------------------------


def _openai(url: str) -> dict[str, Any]:
    return {"provider": "openai", "model": "gpt-test", "base_url": url, "api_key": API_KEY}


@pytest.mark.parametrize("kept_as", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize(
    ("change", "moved"),
    [
        ({"base_url": "https://elsewhere.example/v1"}, "base_url"),
        ({"base_url": "https://api.example.com:8443/v1"}, "base_url"),
        ({"base_url": "https://api.example.com/v2"}, "base_url"),
        ({"base_url": "http://api.example.com/v1"}, "base_url"),
        ({"provider": "anthropic", "model": "claude-test", "base_url": None}, "base_url and provider"),
    ],
    ids=["host", "port", "path", "scheme", "provider"],
)
async def test_moving_an_agents_base_url_needs_its_key_again(
    client: httpx.AsyncClient,
    resources: Resources,
    box: SecretBox,
    change: dict[str, Any],
    moved: str,
    kept_as: str | None,
) -> None:
    agent = await create_agent(client, "gpt", **_openai("https://api.example.com/v1"))
    audited = await _updates(resources, f"agent:{agent['id']}")
    refused = await client.patch(f"/api/v1/agents/{agent['id']}", json=_with(change, "api_key", kept_as))
    _refused(refused, "api_key", moved)
    row = await _agent_row(resources, agent["id"])
    assert (row.provider, row.base_url) == ("openai", "https://api.example.com/v1")
    assert row.api_key_enc is not None and box.decrypt(row.api_key_enc) == API_KEY
    assert await _updates(resources, f"agent:{agent['id']}") == audited

    moved_with_key = await client.patch(
        f"/api/v1/agents/{agent['id']}", json={**change, "api_key": NEW_SECRET}
    )
    assert moved_with_key.status_code == 200, moved_with_key.text
    row = await _agent_row(resources, agent["id"])
    assert row.api_key_enc is not None and box.decrypt(row.api_key_enc) == NEW_SECRET


async def test_an_agent_keeps_its_key_where_the_destination_stays(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    agent = await create_agent(client, "gpt", **_openai("https://API.example.com:443/v1"))
    # The same place written another way, other fields, or the key removed: all accepted.
    for body in (
        {"base_url": "https://api.example.com/v1/", "api_key": MASK},
        {"model": "gpt-other", "temperature": 0.5},
        {"provider": "local"},  # a local model sends the key nowhere
    ):
        response = await client.patch(f"/api/v1/agents/{agent['id']}", json=body)
        assert response.status_code == 200, (body, response.text)
    row = await _agent_row(resources, agent["id"])
    assert row.api_key_enc is not None and box.decrypt(row.api_key_enc) == API_KEY
    # Back from local to a hosted provider: the key has not been sent anywhere for this one.
    back = await client.patch(
        f"/api/v1/agents/{agent['id']}", json=_with(_openai("https://x.example"), "api_key", None)
    )
    _refused(back, "api_key", "base_url and provider")
    removed = await client.patch(
        f"/api/v1/agents/{agent['id']}", json={**_openai("https://x.example"), "api_key": None}
    )
    assert removed.status_code == 200 and removed.json()["api_key"] is None


# --- channel config: client_secret ↔ openapi_endpoint -------------------------------------------


@pytest.mark.parametrize("kept_as", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize(
    "endpoint",
    ["https://attacker.example", "http://127.0.0.1:9998", None],
    ids=["host", "port", "back-to-default"],
)
async def test_moving_a_channels_openapi_endpoint_needs_its_app_secret_again(
    client: httpx.AsyncClient,
    resources: Resources,
    box: SecretBox,
    endpoint: str | None,
    kept_as: str | None,
) -> None:
    channel = await create_channel(client, enabled=False)
    before = await _channel_row(resources, channel["id"])
    config = {"client_id": "ding-app-key", "robot_code": "ding-app-key"}
    if endpoint is not None:
        config["openapi_endpoint"] = endpoint
    refused = await client.patch(
        f"/api/v1/channels/{channel['id']}", json={"config": _with(config, "client_secret", kept_as)}
    )
    _refused(refused, "config.client_secret", "openapi_endpoint")
    row = await _channel_row(resources, channel["id"])
    assert (row.config, row.secrets_enc) == (before.config, before.secrets_enc)
    assert await _updates(resources, f"channel:{channel['id']}") == 0

    accepted = await client.patch(
        f"/api/v1/channels/{channel['id']}", json={"config": {**config, "client_secret": NEW_SECRET}}
    )
    assert accepted.status_code == 200, accepted.text
    row = await _channel_row(resources, channel["id"])
    assert row.config.get("openapi_endpoint") == endpoint
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": NEW_SECRET}


async def test_a_channel_keeps_its_secret_where_the_endpoint_stays(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    channel = await create_channel(client, enabled=False)
    # What the console sends back: the whole config as shown, the secret masked.
    response = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={
            "config": {**channel["config"], "openapi_endpoint": "http://127.0.0.1:9999/", "robot_code": "r2"}
        },
    )
    assert response.status_code == 200, response.text
    row = await _channel_row(resources, channel["id"])
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": CLIENT_SECRET}


# --- user mapping: bind_password ↔ LDAP url (host, port), api_key ↔ ERP url ----------------------


LDAP = {
    "mode": "ldap",
    "url": "ldaps://ldap.example.com:636",
    "bind_dn": "cn=imgate,dc=example,dc=com",
    "base_dn": "dc=example,dc=com",
}
ERP = {"mode": "http", "url": "https://erp.example.com/lookup"}


@pytest.mark.parametrize("kept_as", KEPT, ids=KEPT_IDS)
@pytest.mark.parametrize(
    ("mapping", "secret", "value", "url"),
    [
        (LDAP, "bind_password", BIND_PASSWORD, "ldaps://evil.example.com:636"),
        (LDAP, "bind_password", BIND_PASSWORD, "ldaps://ldap.example.com:1636"),
        (LDAP, "bind_password", BIND_PASSWORD, "ldap://ldap.example.com"),
        (ERP, "api_key", ERP_KEY, "https://evil.example.com/lookup"),
        (ERP, "api_key", ERP_KEY, "https://erp.example.com:8443/lookup"),
        (ERP, "api_key", ERP_KEY, "https://erp.example.com/other"),
    ],
    ids=["ldap-host", "ldap-port", "ldap-scheme", "erp-host", "erp-port", "erp-path"],
)
async def test_moving_a_user_mapping_url_needs_its_secret_again(
    client: httpx.AsyncClient,
    resources: Resources,
    box: SecretBox,
    mapping: dict[str, Any],
    secret: str,
    value: str,
    url: str,
    kept_as: str | None,
) -> None:
    channel = await create_channel(client, enabled=False, user_mapping={**mapping, secret: value})
    before = await _channel_row(resources, channel["id"])
    moved = {**channel["user_mapping"], "url": url}
    refused = await client.patch(
        f"/api/v1/channels/{channel['id']}", json={"user_mapping": _with(moved, secret, kept_as)}
    )
    _refused(refused, f"user_mapping.{secret}", "url")
    row = await _channel_row(resources, channel["id"])
    assert (row.user_mapping, row.user_mapping_secrets_enc) == (
        before.user_mapping,
        before.user_mapping_secrets_enc,
    )

    accepted = await client.patch(
        f"/api/v1/channels/{channel['id']}", json={"user_mapping": {**moved, secret: NEW_SECRET}}
    )
    assert accepted.status_code == 200, accepted.text
    row = await _channel_row(resources, channel["id"])
    assert row.user_mapping["url"] == url
    assert box.decrypt_json(row.user_mapping_secrets_enc) == {secret: NEW_SECRET}


async def test_an_erp_mapping_without_a_key_moves_freely(client: httpx.AsyncClient) -> None:
    channel = await create_channel(client, enabled=False, user_mapping=ERP)
    moved = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={"user_mapping": {**ERP, "url": "https://hr.example.com/who"}},
    )
    assert moved.status_code == 200, moved.text
