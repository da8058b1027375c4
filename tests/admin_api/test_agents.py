"""Creating, listing and reading agents; the API key is encrypted at rest and masked on the way out."""

import asyncio

import httpx
from sqlmodel import select

from imgate_admin.agents.schemas import LOCAL_DEFAULT_MODEL
from imgate_admin.deps import Resources
from imgate_common.db.models import Agent, AuditEntry
from imgate_common.secrets import MASK, SecretBox

from .conftest import API_KEY, agent_body


async def test_create_list_and_get_an_agent_with_a_masked_key(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    body = agent_body(
        "gpt",
        provider="openai",
        model="gpt-4o-mini",
        base_url="https://api.example.com/v1",
        api_key=API_KEY,
        system_prompt="Be brief.",
        temperature=0.2,
        max_output_tokens=300,
    )
    created = await client.post("/api/v1/agents", json=body)
    assert created.status_code == 201, created.text
    agent = created.json()
    assert agent["api_key"] == MASK
    assert agent["base_url"] == "https://api.example.com/v1"  # kept exactly as given
    assert (agent["model"], agent["temperature"], agent["max_output_tokens"]) == ("gpt-4o-mini", 0.2, 300)
    assert agent["max_turns"] == 20  # left out: the table's default
    assert agent["created_at"].endswith(("Z", "+00:00"))

    listed = (await client.get("/api/v1/agents")).json()
    assert [a["name"] for a in listed] == ["gpt"]
    assert listed[0]["api_key"] == MASK
    fetched = await client.get(f"/api/v1/agents/{agent['id']}")
    assert fetched.status_code == 200
    assert fetched.json() == agent
    assert API_KEY not in created.text + fetched.text + str(listed)

    async with resources.sessions() as session:
        row = await session.get(Agent, agent["id"])
        audit = (await session.exec(select(AuditEntry))).all()
    assert row is not None and row.api_key_enc
    assert API_KEY not in row.api_key_enc
    assert box.decrypt(row.api_key_enc) == API_KEY
    assert [(a.actor, a.action, a.target) for a in audit] == [
        ("admin", "agent.create", f"agent:{agent['id']}")
    ]
    assert audit[0].detail["has_api_key"] is True
    assert API_KEY not in str(audit[0].detail)


async def test_a_local_agent_gets_the_bundled_model_and_no_key(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/agents", json=agent_body())
    assert response.status_code == 201
    agent = response.json()
    assert agent["model"] == LOCAL_DEFAULT_MODEL
    assert agent["api_key"] is None
    assert agent["provider"] == "local"


async def test_an_openai_agent_needs_a_base_url(client: httpx.AsyncClient) -> None:
    response = await client.post("/api/v1/agents", json=agent_body(provider="openai", model="gpt-4o-mini"))
    assert response.status_code == 422
    error = response.json()["error"]
    assert error["code"] == "validation_error"
    assert "base_url" in error["message"]
    assert (await client.get("/api/v1/agents")).json() == []


async def test_invalid_agent_fields_are_422_with_the_field_named(client: httpx.AsyncClient) -> None:
    cases = {
        "temperature": agent_body(temperature=2.5),
        "base_url": agent_body(provider="openai", model="m", base_url="not a url"),
        "provider": agent_body(provider="anthropic"),
        "api-key": agent_body(**{"api-key": "x"}),
    }
    for field, body in cases.items():
        response = await client.post("/api/v1/agents", json=body)
        assert response.status_code == 422, field
        assert field in response.json()["error"]["message"], field


async def test_a_duplicate_agent_name_is_409(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/agents", json=agent_body("twin"))).status_code == 201
    response = await client.post("/api/v1/agents", json=agent_body("twin"))
    assert response.status_code == 409
    assert response.json()["error"]["code"] == "conflict"


async def test_concurrent_creates_of_one_name_give_one_201_and_one_409(client: httpx.AsyncClient) -> None:
    responses = await asyncio.gather(
        *(client.post("/api/v1/agents", json=agent_body("racer")) for _ in range(3))
    )
    assert sorted(r.status_code for r in responses) == [201, 409, 409]


async def test_an_unknown_agent_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get("/api/v1/agents/4242")
    assert response.status_code == 404
    assert response.json() == {"error": {"code": "not_found", "message": "agent 4242 does not exist"}}
