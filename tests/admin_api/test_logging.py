"""Secrets and the admin token never reach the logs, whatever the request does."""

import logging

import httpx
import pytest
from nats.aio.client import Client as NATS
from structlog.testing import capture_logs

from imgate_common.messages import ChannelState, ControlReply

from .conftest import ADMIN_TOKEN, API_KEY, CLIENT_SECRET, ControlListener, agent_body, channel_body


async def test_secrets_never_appear_in_log_output(
    client: httpx.AsyncClient,
    anon_client: httpx.AsyncClient,
    nats_client: NATS,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
    first_channel_id: int,
) -> None:
    refusing = ControlReply(channel_id=0, ok=False, state=ChannelState.DISCONNECTED, error="boom")
    await ControlListener(first_channel_id, reply=refusing).listen(nats_client)
    caplog.set_level(logging.DEBUG)
    with capture_logs() as events:
        agent_key = {"provider": "openai", "model": "m", "base_url": "https://x.example", "api_key": API_KEY}
        assert (await client.post("/api/v1/agents", json=agent_body("a", **agent_key))).status_code == 201
        assert (await client.post("/api/v1/agents", json=agent_body("a", **agent_key))).status_code == 409
        assert (
            await client.post("/api/v1/agents", json=agent_body("b", **agent_key, temperature=9))
        ).status_code == 422
        assert (await client.post("/api/v1/channels", json=channel_body())).status_code == 201
        assert (await client.post("/api/v1/channels", json=channel_body())).status_code == 409
        invalid = channel_body("c", config={"client_id": ""})
        assert (await client.post("/api/v1/channels", json=invalid)).status_code == 422
        assert (await client.get("/api/v1/channels")).status_code == 200
        wrong = {"Authorization": f"Bearer {CLIENT_SECRET}"}
        assert (await anon_client.get("/api/v1/channels", headers=wrong)).status_code == 401

    out, err = capfd.readouterr()
    logged = "\n".join([repr(events), caplog.text, out, err])
    assert {"agent_created", "channel_created", "channel_control_refused", "auth_rejected"} <= {
        e["event"] for e in events
    }
    for secret in (API_KEY, CLIENT_SECRET, ADMIN_TOKEN):
        assert secret not in logged
