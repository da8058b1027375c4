"""Credentials inside URL fields (`user:pass@`, `?key=`, `?access_token=`) read as the mask in
responses and in the audit log; the stored value stays whole, and an edit form that sends the
masked URL back keeps it."""

import json
from typing import Any

import httpx
import pytest
from sqlmodel import col, select

from imgate_admin.deps import Resources
from imgate_admin.destinations import mask_url
from imgate_common.db.models import Agent, AuditEntry, Channel
from imgate_common.secrets import MASK

from .conftest import API_KEY, create_agent, create_channel

PASSWORD = "url-password-" + "p" * 12
QUERY_KEY = "url-query-key-" + "q" * 12
TOKEN = "url-access-token-" + "t" * 12
BASE_URL = f"https://proxy-user:{PASSWORD}@llm.example.com/v1?key={QUERY_KEY}&deployment=gpt"
SHOWN_BASE_URL = f"https://proxy-user:{MASK}@llm.example.com/v1?key={MASK}&deployment=gpt"
ENDPOINT = f"https://dingtalk.internal.example/?access_token={TOKEN}"
SHOWN_ENDPOINT = f"https://dingtalk.internal.example/?access_token={MASK}"
ERP_URL = f"https://erp.example.com/lookup?api_key={QUERY_KEY}&tenant=7"
SHOWN_ERP_URL = f"https://erp.example.com/lookup?api_key={MASK}&tenant=7"
CREDENTIALS = (PASSWORD, QUERY_KEY, TOKEN)


def _clean(text: str) -> None:
    for credential in CREDENTIALS:
        assert credential not in text


async def _audit_details(resources: Resources) -> str:
    async with resources.sessions() as session:
        rows = (await session.exec(select(AuditEntry).order_by(col(AuditEntry.id)))).all()
    return json.dumps([r.detail for r in rows])


async def test_an_agents_base_url_credentials_are_masked_and_kept(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    created = await client.post(
        "/api/v1/agents",
        json={
            "name": "proxied",
            "provider": "openai",
            "model": "gpt",
            "base_url": BASE_URL,
            "api_key": API_KEY,
        },
    )
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["base_url"] == SHOWN_BASE_URL
    listed = await client.get("/api/v1/agents")
    one = await client.get(f"/api/v1/agents/{agent['id']}")
    # The edit form sends the URL back as shown: the stored one stays, and so does the key.
    edited = await client.patch(
        f"/api/v1/agents/{agent['id']}", json={"base_url": SHOWN_BASE_URL, "model": "gpt-2", "api_key": ""}
    )
    assert edited.status_code == 200, edited.text
    audit = await client.get("/api/v1/audit", params={"target": f"agent:{agent['id']}"})
    for response in (created, listed, one, edited, audit):
        _clean(response.text)
    assert SHOWN_BASE_URL in audit.text
    _clean(await _audit_details(resources))
    async with resources.sessions() as session:
        row = await session.get(Agent, agent["id"])
    assert row is not None and (row.base_url, row.model) == (BASE_URL, "gpt-2")


async def test_a_url_holding_the_mask_elsewhere_is_refused_not_stored(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    agent = await create_agent(client, "proxied", provider="openai", model="gpt", base_url=BASE_URL)
    changed = SHOWN_BASE_URL.replace("deployment=gpt", "deployment=gpt-4")
    response = await client.patch(f"/api/v1/agents/{agent['id']}", json={"base_url": changed})
    assert response.status_code == 422
    assert response.json()["error"]["details"][0]["loc"] == "base_url"
    async with resources.sessions() as session:
        row = await session.get(Agent, agent["id"])
    assert row is not None and row.base_url == BASE_URL


async def test_a_channels_url_credentials_are_masked_and_kept(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    channel = await create_channel(
        client,
        enabled=False,
        config={"openapi_endpoint": ENDPOINT},
        user_mapping={"mode": "http", "url": ERP_URL},
    )
    assert channel["config"]["openapi_endpoint"] == SHOWN_ENDPOINT
    assert channel["user_mapping"]["url"] == SHOWN_ERP_URL
    listed = await client.get("/api/v1/channels")
    # The console sends back the whole config and mapping as shown, secrets and credentials masked.
    edited = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={"config": channel["config"], "user_mapping": {**channel["user_mapping"], "timeout_s": 3}},
    )
    assert edited.status_code == 200, edited.text
    audit = await client.get("/api/v1/audit", params={"target": f"channel:{channel['id']}"})
    for response in (listed, edited, audit):
        _clean(response.text)
    _clean(json.dumps(channel))
    _clean(await _audit_details(resources))
    async with resources.sessions() as session:
        row = await session.get(Channel, channel["id"])
    assert row is not None
    assert (row.config["openapi_endpoint"], row.user_mapping["url"]) == (ENDPOINT, ERP_URL)
    assert row.user_mapping["timeout_s"] == 3


async def test_audit_entries_written_before_masking_read_masked(
    client: httpx.AsyncClient, resources: Resources
) -> None:
    detail: dict[str, Any] = {"name": "old", "base_url": BASE_URL, "config": {"openapi_endpoint": ENDPOINT}}
    async with resources.sessions() as session:
        session.add(AuditEntry(actor="admin", action="agent.update", target="agent:999999", detail=detail))
        await session.commit()
    response = await client.get("/api/v1/audit", params={"target": "agent:999999"})
    assert response.status_code == 200
    _clean(response.text)
    assert response.json()[0]["detail"]["base_url"] == SHOWN_BASE_URL


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://u:p@h/x", f"https://u:{MASK}@h/x"),
        ("https://tok@h/x", f"https://{MASK}@h/x"),
        ("https://h/x?token=t&a=1#frag", f"https://h/x?token={MASK}&a=1#frag"),
        ("https://h/x?X-Amz-Signature=s&X-Amz-Date=d", f"https://h/x?X-Amz-Signature={MASK}&X-Amz-Date=d"),
        ("https://h/cb#access_token=t", f"https://h/cb#access_token={MASK}"),
        ("https://api.openai.com/v1", "https://api.openai.com/v1"),
        ("ldaps://ldap.example.com:636", "ldaps://ldap.example.com:636"),
    ],
)
def test_mask_url(url: str, shown: str) -> None:
    assert mask_url(url) == shown
