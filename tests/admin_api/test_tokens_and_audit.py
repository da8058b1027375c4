"""API tokens: created and revoked through the API, stored hashed, named in the audit log."""

import hashlib

import httpx
from sqlmodel import select

from imgate_admin.deps import Resources
from imgate_common.db.models import ApiToken

from .conftest import ADMIN_TOKEN, create_agent


async def test_a_created_token_works_is_stored_hashed_and_stops_working_when_revoked(
    client: httpx.AsyncClient, anon_client: httpx.AsyncClient, resources: Resources
) -> None:
    created = await client.post("/api/v1/tokens", json={"name": "deploy-script"})
    assert created.status_code == 201, created.text
    token = created.json()
    clear = token["token"]
    assert clear.startswith("imgt_") and len(clear) > 40
    assert token["prefix"] == clear[:12]
    assert token["created_by"] == "admin"

    async with resources.sessions() as session:
        [row] = (await session.exec(select(ApiToken))).all()
    assert row.token_hash == hashlib.sha256(clear.encode()).hexdigest()
    assert clear not in (row.token_hash, row.prefix, row.name)

    listed = (await client.get("/api/v1/tokens")).json()
    assert [t["name"] for t in listed] == ["deploy-script"]
    assert "token" not in listed[0] and clear not in str(listed)

    as_script = {"Authorization": f"Bearer {clear}"}
    agent = await anon_client.post(
        "/api/v1/agents", json={"name": "by-script", "provider": "local"}, headers=as_script
    )
    assert agent.status_code == 201
    audit = (
        await anon_client.get("/api/v1/audit", params={"action": "agent.create"}, headers=as_script)
    ).json()
    assert audit[0]["actor"] == f"token:deploy-script#{token['id']}"

    assert (await client.delete(f"/api/v1/tokens/{token['id']}")).status_code == 204
    refused = await anon_client.get("/api/v1/agents", headers=as_script)
    assert refused.status_code == 401
    assert (await client.delete(f"/api/v1/tokens/{token['id']}")).status_code == 204  # already revoked
    assert (await client.get("/api/v1/tokens")).json()[0]["revoked_at"] is not None
    assert (await client.delete("/api/v1/tokens/4242")).status_code == 404
    assert (await client.post("/api/v1/tokens", json={"name": ""})).status_code == 422


async def test_the_audit_log_lists_changes_newest_first_with_filters(client: httpx.AsyncClient) -> None:
    first = await create_agent(client, "one")
    await create_agent(client, "two")
    await client.patch(f"/api/v1/agents/{first['id']}", json={"model": "other"})
    entries = await client.get("/api/v1/audit")
    assert [e["action"] for e in entries.json()] == ["agent.update", "agent.create", "agent.create"]
    assert entries.headers["x-total-count"] == "3"
    assert all(e["actor"] == "admin" for e in entries.json())
    targeted = (await client.get("/api/v1/audit", params={"target": f"agent:{first['id']}"})).json()
    assert [e["action"] for e in targeted] == ["agent.update", "agent.create"]
    paged = (await client.get("/api/v1/audit", params={"limit": 1, "offset": 2})).json()
    assert [e["detail"]["name"] for e in paged] == ["one"]
    assert (await client.get("/api/v1/audit", params={"actor": "nobody"})).json() == []


async def test_the_bootstrap_token_is_never_stored(client: httpx.AsyncClient, resources: Resources) -> None:
    await client.post("/api/v1/tokens", json={"name": "x"})
    async with resources.sessions() as session:
        rows = (await session.exec(select(ApiToken))).all()
    assert all(ADMIN_TOKEN not in (r.token_hash + r.prefix + r.name) for r in rows)
    assert all(hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest() != r.token_hash for r in rows)
