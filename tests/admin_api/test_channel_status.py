"""Live channel status comes from the status store the connectors write."""

from datetime import UTC, datetime, timedelta

import httpx
import pytest
from redis.asyncio import Redis

from imgate_admin.settings import AdminSettings
from imgate_common.messages import ChannelState, ChannelStatus
from imgate_common.status import ChannelStatusStore

from .conftest import channel_body, own

STATUS_FIELDS = {
    "channel_id",
    "state",
    "indicator",
    "owner",
    "connected_at",
    "uptime_s",
    "last_error",
    "last_error_at",
    "reconnects",
    "last_inbound_at",
    "messages_in",
    "replies_out",
    "rate_limit_hits",
    "messages_malformed",
    "publish_failures",
    "fallback_replies",
}


async def _create(client: httpx.AsyncClient, name: str, enabled: bool = True) -> int:
    response = await client.post("/api/v1/channels", json=channel_body(name, enabled=enabled))
    assert response.status_code == 201
    channel_id: int = response.json()["id"]
    return channel_id


async def test_a_channel_without_status_reads_disconnected(client: httpx.AsyncClient) -> None:
    channel_id = await _create(client, "quiet")
    status = (await client.get(f"/api/v1/channels/{channel_id}/status")).json()
    assert set(status) == STATUS_FIELDS
    assert (status["channel_id"], status["state"], status["uptime_s"]) == (channel_id, "disconnected", None)


async def test_a_connected_channel_reports_its_uptime_and_counters(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    channel_id = await _create(client, "busy")
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    connected_at = datetime.now(UTC) - timedelta(seconds=30)
    await store.put(
        ChannelStatus(
            channel_id=channel_id,
            state=ChannelState.CONNECTED,
            owner="connector-a",
            connected_at=connected_at,
            reconnects=2,
            messages_in=5,
            replies_out=4,
            rate_limit_hits=1,
        )
    )
    status = (await client.get(f"/api/v1/channels/{channel_id}/status")).json()
    assert status["state"] == "connected"
    assert 30 <= status["uptime_s"] < 40
    assert status["owner"] == "connector-a"
    assert datetime.fromisoformat(status["connected_at"]) == connected_at
    assert (
        status["reconnects"],
        status["messages_in"],
        status["replies_out"],
        status["rate_limit_hits"],
    ) == (
        2,
        5,
        4,
        1,
    )
    listed = own((await client.get("/api/v1/channels")).json())
    assert listed[0]["status"]["state"] == "connected"
    assert (await client.get(f"/api/v1/channels/{channel_id}")).json()["status"]["owner"] == "connector-a"


async def test_a_disabled_channel_reads_disabled_even_with_a_live_entry(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    channel_id = await _create(client, "off", enabled=False)
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    await store.put(
        ChannelStatus(channel_id=channel_id, state=ChannelState.CONNECTED, connected_at=datetime.now(UTC))
    )
    status = (await client.get(f"/api/v1/channels/{channel_id}/status")).json()
    assert status["state"] == "disabled"
    assert status["uptime_s"] is None


async def test_the_list_shows_each_channels_own_status(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    up = await _create(client, "up")
    await _create(client, "down")
    await _create(client, "off", enabled=False)
    await ChannelStatusStore(redis_client, settings.redis_prefix).put(
        ChannelStatus(channel_id=up, state=ChannelState.CONNECTED, connected_at=datetime.now(UTC))
    )
    listed = own((await client.get("/api/v1/channels")).json())
    assert [(c["name"], c["status"]["state"]) for c in listed] == [
        ("up", "connected"),
        ("down", "disconnected"),
        ("off", "disabled"),
    ]


async def test_errors_other_services_report_for_a_channel_are_shown(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    if not hasattr(store, "record_error"):
        pytest.skip("this status store has no reported errors")
    channel_id = await _create(client, "mapped")
    await store.record_error(channel_id, "router", "directory unavailable: LDAPSocketOpenError")
    status = (await client.get(f"/api/v1/channels/{channel_id}/status")).json()
    assert status["last_error"] == "router: directory unavailable: LDAPSocketOpenError"
    assert status["last_error_at"] is not None


async def test_a_reported_error_shows_no_credentials_from_the_urls_it_quotes(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    channel_id = await _create(client, "quoted")
    error = (
        "plain reply failed: Server error '503' for url "
        "'https://oapi.dingtalk.com/robot/sendBySession?session=webhook-session-value'; media: "
        "https://bucket.oss.example.com/a.png?Expires=1&Signature=link-signature-value, "
        "lookup https://svc:lookup-password-value@erp.example.com/who"
    )
    await store.record_error(channel_id, "connector", error)
    for path in (
        f"/api/v1/channels/{channel_id}/status",
        f"/api/v1/channels/{channel_id}",
        "/api/v1/channels",
    ):
        response = await client.get(path)
        for secret in ("webhook-session-value", "link-signature-value", "lookup-password-value"):
            assert secret not in response.text, (path, secret)
    status = (await client.get(f"/api/v1/channels/{channel_id}/status")).json()
    assert (
        "sendBySession?session=***" in status["last_error"]
        and "svc:***@erp.example.com" in status["last_error"]
    )
