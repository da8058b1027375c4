"""Changing, deleting and testing agents; the key stays encrypted and masked throughout."""

import asyncio
import json
from collections.abc import Iterator

import httpx
import pytest
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from sqlmodel import col, select

from imgate_admin.agents.schemas import LOCAL_DEFAULT_MODEL
from imgate_admin.agents.tester import LOCAL_MESSAGE, AgentTester
from imgate_admin.deps import Resources
from imgate_common.bus import CONFIG_CHANGED
from imgate_common.db.models import Agent, AuditEntry
from imgate_common.messages import ConfigChanged, ConfigKind, ControlAction
from imgate_common.secrets import MASK, SecretBox
from tests.support.openai_stub import ScriptedModel, serve_scripted_model

from .conftest import API_KEY, ControlListener, create_agent, create_channel

NEW_KEY = "sk-replaced-" + "k" * 20


@pytest.fixture
def model() -> Iterator[tuple[ScriptedModel, str]]:
    scripted = ScriptedModel(word_delay_s=0.0, answer=lambda messages: "Hello there, I am listening.")
    with serve_scripted_model(scripted) as url:
        yield scripted, url


async def _key(resources: Resources, box: SecretBox, agent_id: int) -> str | None:
    async with resources.sessions() as session:
        row = await session.get(Agent, agent_id)
    assert row is not None
    return box.decrypt(row.api_key_enc) if row.api_key_enc else None


def _openai(url: str = "https://api.example.com/v1", **extra: object) -> dict[str, object]:
    return {"provider": "openai", "model": "gpt-test", "base_url": url, "api_key": API_KEY, **extra}


@pytest.mark.parametrize("kept_as", [MASK, "", None], ids=["mask", "empty", "left-out"])
async def test_an_update_keeps_the_key_unless_a_new_one_is_sent(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox, kept_as: str | None
) -> None:
    agent = await create_agent(client, "gpt", **_openai())
    body: dict[str, object] = {"model": "gpt-better", "temperature": 0.1}
    if kept_as is not None:
        body["api_key"] = kept_as
    response = await client.patch(f"/api/v1/agents/{agent['id']}", json=body)
    assert response.status_code == 200, response.text
    assert (response.json()["model"], response.json()["api_key"]) == ("gpt-better", MASK)
    assert await _key(resources, box, agent["id"]) == API_KEY

    replaced = await client.patch(f"/api/v1/agents/{agent['id']}", json={"api_key": NEW_KEY})
    assert replaced.json()["api_key"] == MASK and NEW_KEY not in replaced.text
    assert await _key(resources, box, agent["id"]) == NEW_KEY
    removed = await client.patch(f"/api/v1/agents/{agent['id']}", json={"api_key": None})
    assert removed.json()["api_key"] is None
    assert await _key(resources, box, agent["id"]) is None

    async with resources.sessions() as session:
        audit = (await session.exec(select(AuditEntry).where(col(AuditEntry.action) == "agent.update"))).all()
    assert [a.detail["changed"] for a in audit] == [["model", "temperature"], ["api_key"], ["api_key"]]
    assert API_KEY not in str([a.detail for a in audit]) and NEW_KEY not in str([a.detail for a in audit])


async def test_editing_an_agent_reloads_the_enabled_channels_using_it(
    client: httpx.AsyncClient, control: ControlListener
) -> None:
    agent = await create_agent(client)
    used = await create_channel(client, "uses-it", default_agent_id=agent["id"])
    off = await create_channel(client, "uses-it-off", default_agent_id=agent["id"], enabled=False)
    other = await create_channel(client, "other")
    response = await client.patch(f"/api/v1/agents/{agent['id']}", json={"system_prompt": "Be brief."})
    assert response.status_code == 200
    assert [r.action for r in control.for_channel(used["id"])] == [ControlAction.START, ControlAction.RELOAD]
    assert control.for_channel(off["id"]) == []
    assert [r.action for r in control.for_channel(other["id"])] == [ControlAction.START]


async def test_switching_providers_checks_what_the_new_one_needs(client: httpx.AsyncClient) -> None:
    agent = await create_agent(client)
    to_openai = await client.patch(f"/api/v1/agents/{agent['id']}", json={"provider": "openai"})
    assert to_openai.status_code == 422
    assert to_openai.json()["error"]["message"] == "provider: model and base_url required for provider openai"
    ok = await client.patch(f"/api/v1/agents/{agent['id']}", json=_openai())
    assert ok.status_code == 200 and ok.json()["provider"] == "openai"
    back = await client.patch(f"/api/v1/agents/{agent['id']}", json={"provider": "local"})
    assert back.json()["model"] == LOCAL_DEFAULT_MODEL


@pytest.mark.parametrize(
    ("change", "status"),
    [
        ({"name": None}, 422),
        ({"temperature": 3}, 422),
        ({"max_turns": 0}, 422),
        ({"provider": "carrier-pigeon"}, 422),
        ({"api_key": "x" * 501}, 422),
        ({"unknown": 1}, 422),
    ],
)
async def test_invalid_agent_updates_are_422(
    client: httpx.AsyncClient, change: dict[str, object], status: int
) -> None:
    agent = await create_agent(client)
    response = await client.patch(f"/api/v1/agents/{agent['id']}", json=change)
    assert response.status_code == status, response.text


async def test_renaming_onto_another_agent_is_409(client: httpx.AsyncClient) -> None:
    await create_agent(client, "one")
    two = await create_agent(client, "two")
    response = await client.patch(f"/api/v1/agents/{two['id']}", json={"name": "one"})
    assert response.status_code == 409
    assert (await client.patch("/api/v1/agents/4242", json={})).status_code == 404


async def test_an_agent_in_use_cannot_be_deleted(client: httpx.AsyncClient) -> None:
    agent = await create_agent(client)
    channel = await create_channel(client, "busy", default_agent_id=agent["id"], enabled=False)
    refused = await client.delete(f"/api/v1/agents/{agent['id']}")
    assert refused.status_code == 409
    assert "'busy'" in refused.json()["error"]["message"]
    await client.patch(f"/api/v1/channels/{channel['id']}", json={"default_agent_id": None})
    assert (await client.delete(f"/api/v1/agents/{agent['id']}")).status_code == 204
    assert (await client.get(f"/api/v1/agents/{agent['id']}")).status_code == 404
    assert (await client.delete(f"/api/v1/agents/{agent['id']}")).status_code == 404


# --- test this agent ------------------------------------------------------------------------


async def test_an_openai_agent_is_tested_against_its_model(
    client: httpx.AsyncClient, model: tuple[ScriptedModel, str]
) -> None:
    scripted, url = model
    agent = await create_agent(client, "scripted", **_openai(url, system_prompt="You are terse."))
    response = await client.post(f"/api/v1/agents/{agent['id']}/test", json={"prompt": "Are you there?"})
    assert response.status_code == 200
    result = response.json()
    assert result["result"] == "passed"
    assert result["reply"] == "Hello there, I am listening."
    assert result["latency_ms"] >= 0 and result["category"] is None
    [request] = scripted.requests
    assert request["model"] == "gpt-test"
    assert request["messages"] == [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Are you there?"},
    ]
    assert request["max_tokens"] <= 64 and request["stream"] is True
    assert API_KEY not in response.text
    default_prompt = await client.post(f"/api/v1/agents/{agent['id']}/test")
    assert default_prompt.json()["result"] == "passed"


@pytest.mark.parametrize(
    ("status", "category"),
    [(401, "auth_failed"), (429, "rate_limited"), (500, "provider_error")],
)
async def test_a_failing_provider_is_reported_by_category(
    client: httpx.AsyncClient, model: tuple[ScriptedModel, str], status: int, category: str
) -> None:
    scripted, url = model
    scripted.fail_status = status
    agent = await create_agent(client, "failing", **_openai(url))
    result = (await client.post(f"/api/v1/agents/{agent['id']}/test")).json()
    assert (result["result"], result["category"]) == ("failed", category)
    assert f"HTTP {status}" in result["message"]
    assert "scripted failure" not in result["message"]  # the provider's body is not relayed


async def test_a_slow_provider_times_out_quickly(client: httpx.AsyncClient) -> None:
    slow = ScriptedModel(word_delay_s=2.0)
    with serve_scripted_model(slow) as url:
        agent = await create_agent(client, "slow", **_openai(url, timeout_s=0.5))
        result = (await client.post(f"/api/v1/agents/{agent['id']}/test")).json()
    assert (result["result"], result["category"]) == ("failed", "timed_out")
    assert result["latency_ms"] < 2000


async def test_an_unreachable_provider_names_the_host_only(client: httpx.AsyncClient) -> None:
    agent = await create_agent(client, "nowhere", **_openai("http://user:pw@127.0.0.1:9/v1?key=secretq"))
    result = (await client.post(f"/api/v1/agents/{agent['id']}/test")).json()
    assert (result["result"], result["category"]) == ("failed", "provider_error")
    assert "127.0.0.1:9" in result["message"]
    assert "pw" not in result["message"] and "secretq" not in result["message"]


async def test_a_local_agent_is_not_tested_by_the_admin_api(client: httpx.AsyncClient) -> None:
    agent = await create_agent(client)
    result = (await client.post(f"/api/v1/agents/{agent['id']}/test")).json()
    assert result == {
        "result": "skipped",
        "reply": None,
        "latency_ms": None,
        "category": None,
        "message": LOCAL_MESSAGE,
    }
    assert (await client.post("/api/v1/agents/4242/test")).status_code == 404
    assert (await client.post(f"/api/v1/agents/{agent['id']}/test", json={"prompt": ""})).status_code == 422


def _agent(**fields: object) -> Agent:
    defaults: dict[str, object] = {"id": 1, "name": "a", "provider": "openai", "model": "m"}
    return Agent(**{**defaults, "base_url": "https://llm.example/v1", **fields})


async def test_the_tester_sends_the_key_and_reads_a_plain_json_answer() -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"choices": [{"message": {"content": "hi"}}]})

    async with httpx.AsyncClient(transport=httpx.MockTransport(answer)) as http:
        result = await AgentTester(http, 5).test(_agent(), API_KEY, "ping")
    assert result.result == "passed" and result.reply == "hi"
    assert seen[0].url == "https://llm.example/v1/chat/completions"
    assert seen[0].headers["authorization"] == f"Bearer {API_KEY}"
    assert json.loads(seen[0].content)["messages"] == [{"role": "user", "content": "ping"}]


@pytest.mark.parametrize(
    "response",
    [
        httpx.Response(200, json={"unexpected": True}),
        httpx.Response(200, text="data: {broken\n\n", headers={"content-type": "text/event-stream"}),
        httpx.Response(200, json={"choices": [{"message": {"content": "  "}}]}),
    ],
    ids=["no-choices", "broken-stream", "blank"],
)
async def test_the_tester_reports_unreadable_answers(response: httpx.Response) -> None:
    async with httpx.AsyncClient(transport=httpx.MockTransport(lambda _request: response)) as http:
        result = await AgentTester(http, 5).test(_agent(), None, "ping")
    assert (result.result, result.category) == ("failed", "provider_error")


async def test_editing_an_agent_tells_routers_and_runners_to_read_it_again(
    client: httpx.AsyncClient, nats_client: NATS
) -> None:
    heard: list[ConfigChanged] = []

    async def on_notice(msg: Msg) -> None:
        heard.append(ConfigChanged.model_validate_json(msg.data))

    await nats_client.subscribe(CONFIG_CHANGED, cb=on_notice)
    await nats_client.flush()
    agent = await create_agent(client)
    response = await client.patch(f"/api/v1/agents/{agent['id']}", json={"system_prompt": "Be brief."})
    assert response.status_code == 200
    expected = ConfigChanged(kind=ConfigKind.AGENT, id=agent["id"])
    for _ in range(100):
        if expected in heard:
            break
        await asyncio.sleep(0.02)
    assert expected in heard
