"""Rotating IMGATE_SECRET_KEYS: new key first, re-encrypt everything, then drop the old key."""

import asyncio

import httpx
import pytest
from cryptography.fernet import Fernet
from typer.testing import CliRunner

from imgate_admin.cli import app as cli
from imgate_admin.deps import Resources
from imgate_admin.settings import AdminSettings
from imgate_common.db.models import Agent, Channel
from imgate_common.secrets import SecretBox, UnreadableSecrets

from .conftest import API_KEY, CLIENT_SECRET, app_client, create_agent

BIND_PASSWORD = "bind-pw-for-rotation"


async def _seed(client: httpx.AsyncClient) -> tuple[int, int]:
    agent = await create_agent(
        client, "keyed", provider="openai", model="m", base_url="https://llm.example/v1", api_key=API_KEY
    )
    channel = await client.post(
        "/api/v1/channels",
        json={
            "name": "rotating",
            "platform": "dingtalk",
            "config": {"client_id": "id", "client_secret": CLIENT_SECRET},
            "user_mapping": {
                "mode": "ldap",
                "url": "ldap://directory",
                "bind_dn": "cn=x",
                "bind_password": BIND_PASSWORD,
                "base_dn": "dc=x",
            },
            "enabled": False,
        },
    )
    assert channel.status_code == 201
    return agent["id"], channel.json()["id"]


async def _tokens(resources: Resources, agent_id: int, channel_id: int) -> list[str]:
    async with resources.sessions() as session:
        agent = await session.get(Agent, agent_id)
        channel = await session.get(Channel, channel_id)
    assert (
        agent and channel and agent.api_key_enc and channel.secrets_enc and channel.user_mapping_secrets_enc
    )
    return [agent.api_key_enc, channel.secrets_enc, channel.user_mapping_secrets_enc]


def _opened(box: SecretBox, tokens: list[str]) -> list[object]:
    return [box.decrypt(tokens[0]), box.decrypt_json(tokens[1]), box.decrypt_json(tokens[2])]


EXPECTED = [API_KEY, {"client_secret": CLIENT_SECRET}, {"bind_password": BIND_PASSWORD}]


async def test_rotation_rewrites_every_secret_under_the_new_key(
    client: httpx.AsyncClient, resources: Resources, settings: AdminSettings, secret_key: str
) -> None:
    agent_id, channel_id = await _seed(client)
    old = await _tokens(resources, agent_id, channel_id)
    new_key = Fernet.generate_key().decode()

    # Step 1: the new key goes first, the old one stays (every service can read both).
    ring = settings.model_copy(update={"secret_keys": f"{new_key},{secret_key}"})
    async with app_client(ring) as (_app, rotated_client):
        report = await rotated_client.post("/api/v1/secrets/rotate")
        assert report.status_code == 200
        assert report.json() == {"rotated": 3, "unreadable": [], "changed_meanwhile": 0}
        audit = (await rotated_client.get("/api/v1/audit", params={"action": "secrets.rotate"})).json()
        assert audit[0]["detail"]["rotated"] == 3

    # Step 2: everything opens with the new key alone, nothing with the old one.
    rotated = await _tokens(resources, agent_id, channel_id)
    assert rotated != old
    assert _opened(SecretBox([new_key]), rotated) == EXPECTED
    with pytest.raises(ValueError):
        SecretBox([secret_key]).decrypt(rotated[0])

    # Step 3: the old key dropped, the API still serves and updates with the secrets kept.
    only_new = settings.model_copy(update={"secret_keys": new_key})
    async with app_client(only_new) as (_app, new_client):
        kept = await new_client.patch(
            f"/api/v1/channels/{channel_id}", json={"config": {"client_id": "id2", "client_secret": "***"}}
        )
        assert kept.status_code == 200
    assert SecretBox([new_key]).decrypt_json((await _tokens(resources, agent_id, channel_id))[1]) == {
        "client_secret": CLIENT_SECRET
    }


async def test_secrets_no_key_opens_are_reported_not_destroyed(
    client: httpx.AsyncClient, resources: Resources, settings: AdminSettings, secret_key: str
) -> None:
    agent_id, channel_id = await _seed(client)
    before = await _tokens(resources, agent_id, channel_id)
    stranger = settings.model_copy(update={"secret_keys": Fernet.generate_key().decode()})
    with pytest.raises(
        UnreadableSecrets, match=f"cannot decrypt 3 stored secret.*agents.api_key_enc#{agent_id}"
    ):
        async with app_client(stranger):
            pass
    # Started on purpose to recover from a lost key: it reports, and asks for the secrets again.
    recovering = stranger.model_copy(update={"recover_unreadable_secrets": True})
    async with app_client(recovering) as (_app, wrong):
        report = (await wrong.post("/api/v1/secrets/rotate")).json()
        assert report["rotated"] == 0
        assert sorted(report["unreadable"]) == sorted(
            [
                f"agents.api_key_enc#{agent_id}",
                f"channels.secrets_enc#{channel_id}",
                f"channels.user_mapping_secrets_enc#{channel_id}",
            ]
        )
        # An edit that sends the mask cannot keep what cannot be read: it asks for the secret.
        masked = await wrong.patch(
            f"/api/v1/channels/{channel_id}", json={"config": {"client_id": "id", "client_secret": "***"}}
        )
        assert masked.status_code == 422
        assert masked.json()["error"]["details"][0]["loc"] == "config.client_secret"
        test = (await wrong.post(f"/api/v1/agents/{agent_id}/test")).json()
        assert (test["result"], test["category"]) == ("failed", "not_configured")
    assert await _tokens(resources, agent_id, channel_id) == before


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
async def test_the_cli_rotates_directly_on_the_database(
    client: httpx.AsyncClient,
    resources: Resources,
    settings: AdminSettings,
    secret_key: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    agent_id, channel_id = await _seed(client)
    new_key = Fernet.generate_key().decode()
    monkeypatch.setenv("IMGATE_SECRET_KEYS", f"{new_key},{secret_key}")
    # In a thread: the command runs its own event loop, as it does from a shell.
    result = await asyncio.to_thread(CliRunner().invoke, cli, ["secrets", "rotate", "--local", "--json"])
    assert result.exit_code == 0, result.output
    assert '"rotated": 3' in result.output
    assert _opened(SecretBox([new_key]), await _tokens(resources, agent_id, channel_id)) == EXPECTED
