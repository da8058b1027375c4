"""Changing channels: update with secret keep/replace, enable, disable, restart, delete, and the
control request each change sends to the owning connector."""

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from redis.asyncio import Redis
from sqlmodel import col, select

from imgate_admin.deps import Resources
from imgate_admin.settings import AdminSettings
from imgate_common.db.models import AuditEntry, Channel, Conversation, Message
from imgate_common.messages import ChannelState, ChannelStatus, ControlAction
from imgate_common.platform_config import (
    AutoUserMapping,
    LdapUserMapping,
    StaticUserMapping,
    parse_user_mapping,
)
from imgate_common.secrets import MASK, SecretBox
from imgate_common.status import ChannelStatusStore

from .conftest import CLIENT_SECRET, ControlListener, create_agent, create_channel

NEW_SECRET = "dt-rotated-secret-value"
BIND_PASSWORD = "ldap-bind-password-value"


async def _row(resources: Resources, channel_id: int) -> Channel:
    async with resources.sessions() as session:
        row = await session.get(Channel, channel_id)
    assert row is not None
    return row


async def _audit(resources: Resources, action: str) -> list[AuditEntry]:
    async with resources.sessions() as session:
        query = select(AuditEntry).where(col(AuditEntry.action) == action).order_by(col(AuditEntry.id))
        return list((await session.exec(query)).all())


def _actions(control: ControlListener, channel_id: int) -> list[ControlAction]:
    return [r.action for r in control.for_channel(channel_id)]


# --- update -------------------------------------------------------------------------------------


@pytest.mark.parametrize("kept_as", [MASK, "", None], ids=["mask", "empty", "left-out"])
async def test_an_update_keeps_a_secret_sent_masked_empty_or_left_out(
    client: httpx.AsyncClient,
    resources: Resources,
    box: SecretBox,
    control: ControlListener,
    kept_as: str | None,
) -> None:
    channel = await create_channel(client)
    config = {**channel["config"], "robot_code": "new-robot"}
    if kept_as is None:
        del config["client_secret"]
    else:
        config["client_secret"] = kept_as
    response = await client.patch(f"/api/v1/channels/{channel['id']}", json={"config": config})
    assert response.status_code == 200, response.text
    updated = response.json()
    assert updated["config"]["robot_code"] == "new-robot"
    assert updated["config"]["client_secret"] == MASK
    assert updated["control"]["action"] == "reload" and updated["control"]["outcome"] == "answered"
    row = await _row(resources, channel["id"])
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": CLIENT_SECRET}
    assert _actions(control, channel["id"]) == [ControlAction.START, ControlAction.RELOAD]
    [audit] = await _audit(resources, "channel.update")
    assert audit.detail["changed"] == ["config"]


async def test_a_new_secret_replaces_the_stored_one_and_is_never_shown(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox, control: ControlListener
) -> None:
    channel = await create_channel(client)
    config = {**channel["config"], "client_secret": NEW_SECRET}
    response = await client.patch(f"/api/v1/channels/{channel['id']}", json={"config": config})
    assert response.status_code == 200
    assert NEW_SECRET not in response.text and CLIENT_SECRET not in response.text
    row = await _row(resources, channel["id"])
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": NEW_SECRET}
    assert _actions(control, channel["id"])[-1] == ControlAction.RELOAD
    [audit] = await _audit(resources, "channel.update")
    assert audit.detail["changed"] == ["secrets"]
    assert NEW_SECRET not in str(audit.detail) and CLIENT_SECRET not in str(audit.detail)


async def test_an_update_of_plain_fields_reloads_and_an_unchanged_one_sends_nothing(
    client: httpx.AsyncClient, control: ControlListener
) -> None:
    agent = await create_agent(client)
    channel = await create_channel(client)
    change = {
        "name": "renamed",
        "default_agent_id": agent["id"],
        "session_scope": "user",
        "language": "en-US",
        "card_qps": 7,
    }
    updated = (await client.patch(f"/api/v1/channels/{channel['id']}", json=change)).json()
    assert {k: updated[k] for k in change} == change
    again = await client.patch(f"/api/v1/channels/{channel['id']}", json=change)
    assert again.status_code == 200 and again.json()["control"] is None
    cleared = (
        await client.patch(f"/api/v1/channels/{channel['id']}", json={"default_agent_id": None})
    ).json()
    assert cleared["default_agent_id"] is None
    assert _actions(control, channel["id"]) == [
        ControlAction.START,
        ControlAction.RELOAD,
        ControlAction.RELOAD,
    ]


async def test_toggling_enabled_in_an_update_starts_and_stops(
    client: httpx.AsyncClient, control: ControlListener
) -> None:
    channel = await create_channel(client, enabled=False)
    off = await client.patch(f"/api/v1/channels/{channel['id']}", json={"name": "still-off"})
    assert off.json()["control"] is None  # a disabled channel's connector has nothing to do
    on = (await client.patch(f"/api/v1/channels/{channel['id']}", json={"enabled": True})).json()
    assert on["control"]["action"] == "start"
    off_again = (await client.patch(f"/api/v1/channels/{channel['id']}", json={"enabled": False})).json()
    assert off_again["control"]["action"] == "stop"
    assert off_again["status"]["state"] == "disabled"
    assert _actions(control, channel["id"]) == [ControlAction.START, ControlAction.STOP]


@pytest.mark.parametrize(
    ("change", "status", "loc"),
    [
        ({"platform": "feishu"}, 422, "platform"),
        ({"name": None}, 422, "name"),
        ({"enabled": None}, 422, "enabled"),
        ({"config": {"client_id": ""}}, 422, "config.client_id"),
        ({"config": {"client_id": "x", "nonsense": 1}}, 422, "config.nonsense"),
        ({"card_qps": 0}, 422, "card_qps"),
        ({"language": "not a language"}, 422, "language"),
        ({"user_mapping": {"mode": "ldap"}}, 422, "user_mapping.ldap.url"),
        ({"user_mapping": {"mode": "carrier-pigeon"}}, 422, "user_mapping"),
        ({"default_agent_id": 4242}, 400, None),
        ({"colour": "blue"}, 422, "colour"),
    ],
)
async def test_invalid_updates_are_refused_and_change_nothing(
    client: httpx.AsyncClient,
    resources: Resources,
    change: dict[str, Any],
    status: int,
    loc: str | None,
) -> None:
    channel = await create_channel(client, enabled=False)
    response = await client.patch(f"/api/v1/channels/{channel['id']}", json=change)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    if loc is not None:
        assert loc in [d["loc"] for d in error["details"]], error
    assert CLIENT_SECRET not in response.text
    row = await _row(resources, channel["id"])
    public = {k: v for k, v in channel["config"].items() if k != "client_secret"}
    assert (row.name, row.config, row.card_qps, row.language) == (channel["name"], public, 20, "zh-CN")
    assert (await client.get(f"/api/v1/channels/{channel['id']}")).json()["updated_at"] == channel[
        "updated_at"
    ]


async def test_renaming_onto_another_channel_is_409_and_unknown_ids_404(client: httpx.AsyncClient) -> None:
    await create_channel(client, "first", enabled=False)
    second = await create_channel(client, "second", enabled=False)
    clash = await client.patch(f"/api/v1/channels/{second['id']}", json={"name": "first"})
    assert clash.status_code == 409
    assert clash.json()["error"] == {"code": "conflict", "message": "a channel named 'first' already exists"}
    for method, path in [
        ("PATCH", "/api/v1/channels/424242"),
        ("DELETE", "/api/v1/channels/424242"),
        ("POST", "/api/v1/channels/424242/enable"),
        ("POST", "/api/v1/channels/424242/disable"),
        ("POST", "/api/v1/channels/424242/restart"),
    ]:
        response = await client.request(method, path, json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path)
        assert response.json()["error"]["code"] == "not_found"


# --- enable, disable, restart -------------------------------------------------------------------


async def test_disable_enable_and_restart_send_their_control_requests(
    client: httpx.AsyncClient, resources: Resources, control: ControlListener
) -> None:
    channel = await create_channel(client)
    disabled = await client.post(f"/api/v1/channels/{channel['id']}/disable")
    assert disabled.status_code == 200
    assert disabled.json()["enabled"] is False
    assert disabled.json()["status"]["state"] == "disabled"
    assert disabled.json()["status"]["indicator"] == "⚪"
    assert (await _row(resources, channel["id"])).enabled is False

    refused = await client.post(f"/api/v1/channels/{channel['id']}/restart")
    assert refused.status_code == 400
    assert refused.json()["error"] == {
        "code": "invalid_request",
        "message": f"channel {channel['id']} is disabled; enable it to connect it again",
    }

    enabled = await client.post(f"/api/v1/channels/{channel['id']}/enable")
    assert enabled.json()["enabled"] is True
    assert enabled.json()["control"] == {
        "action": "start",
        "outcome": "answered",
        "ok": True,
        "state": "connecting",
        "error": None,
        "owner": "test-connector",
    }
    restarted = await client.post(f"/api/v1/channels/{channel['id']}/restart")
    assert restarted.status_code == 200
    assert restarted.json()["control"]["action"] == "restart"
    assert _actions(control, channel["id"]) == [
        ControlAction.START,
        ControlAction.STOP,
        ControlAction.START,
        ControlAction.RESTART,
    ]
    audit = [a.action for a in await _audit(resources, "channel.disable")]
    audit += [a.action for a in await _audit(resources, "channel.enable")]
    audit += [a.action for a in await _audit(resources, "channel.restart")]
    assert audit == ["channel.disable", "channel.enable", "channel.restart"]


async def test_an_unanswered_request_is_reported_not_failed(
    client: httpx.AsyncClient, nats_client: Any
) -> None:
    # No listener for these ids: nobody answers (no responders, or a timeout on a busy bus).
    channel = await create_channel(client, enabled=False)
    response = await client.post(f"/api/v1/channels/{channel['id']}/enable")
    assert response.status_code == 200
    assert response.json()["control"]["outcome"] in ("no_responders", "timeout")
    assert response.json()["control"]["ok"] is None


# --- delete -------------------------------------------------------------------------------------


async def test_delete_stops_the_channel_first_then_removes_it_with_its_conversations(
    client: httpx.AsyncClient, resources: Resources, control: ControlListener, redis_client: Redis
) -> None:
    channel = await create_channel(client)
    store = ChannelStatusStore(redis_client, resources.settings.redis_prefix)
    await store.put(ChannelStatus(channel_id=channel["id"], state=ChannelState.CONNECTED))
    async with resources.sessions() as session:
        session.add(Conversation(id="c-1", channel_id=channel["id"], scope_key="dingtalk:cid"))
        await session.flush()
        session.add(Message(conversation_id="c-1", role="user", content="hello"))
        await session.commit()

    response = await client.delete(f"/api/v1/channels/{channel['id']}")
    assert response.status_code == 204
    assert _actions(control, channel["id"]) == [ControlAction.START, ControlAction.STOP]
    assert (await client.get(f"/api/v1/channels/{channel['id']}")).status_code == 404
    assert await store.get(channel["id"]) is None
    async with resources.sessions() as session:
        assert await session.get(Conversation, "c-1") is None
    [audit] = await _audit(resources, "channel.delete")
    assert audit.detail["deleted"] == {"messages": 1, "conversations": 1}
    assert (await client.delete(f"/api/v1/channels/{channel['id']}")).status_code == 404


# --- list -------------------------------------------------------------------------------------------


async def test_the_list_pages_and_filters_by_platform_and_state(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    ids = [(await create_channel(client, f"ch-{i}", enabled=i != 3))["id"] for i in range(5)]
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    for channel_id in ids[:2]:
        await store.put(ChannelStatus(channel_id=channel_id, state=ChannelState.CONNECTED))

    page = await client.get("/api/v1/channels", params={"platform": "dingtalk", "limit": 2, "offset": 1})
    assert [c["id"] for c in page.json()] == ids[1:3]
    assert page.headers["x-total-count"] == "5"

    async def names(**params: Any) -> tuple[list[str], str]:
        response = await client.get("/api/v1/channels", params={"platform": "dingtalk", **params})
        assert response.status_code == 200
        return [c["name"] for c in response.json()], response.headers["x-total-count"]

    assert await names(state="connected") == (["ch-0", "ch-1"], "2")
    assert await names(state="connected", limit=1, offset=1) == (["ch-1"], "2")
    assert await names(state="disconnected") == (["ch-2", "ch-4"], "2")
    assert await names(state="disabled") == (["ch-3"], "1")
    assert await names(state="connecting") == ([], "0")
    empty = await client.get("/api/v1/channels", params={"platform": "feishu"})
    assert empty.json() == [] and empty.headers["x-total-count"] == "0"


async def test_a_stale_green_reads_disconnected(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    """An owner that died stops refreshing its entry: the last green it wrote is not believed."""
    channel = await create_channel(client)
    store = ChannelStatusStore(redis_client, settings.redis_prefix)
    written = datetime.now(UTC) - timedelta(seconds=20)
    await store.put(
        ChannelStatus(
            channel_id=channel["id"], state=ChannelState.CONNECTED, connected_at=written, updated_at=written
        )
    )
    status = (await client.get(f"/api/v1/channels/{channel['id']}/status")).json()
    assert (status["state"], status["indicator"], status["uptime_s"]) == ("disconnected", "🔴", None)


async def test_an_unreadable_status_entry_reads_disconnected(
    client: httpx.AsyncClient, redis_client: Redis, settings: AdminSettings
) -> None:
    channel = await create_channel(client)
    await redis_client.set(f"{settings.redis_prefix}:status:{channel['id']}", b"{not json", ex=15)
    status = await client.get(f"/api/v1/channels/{channel['id']}/status")
    assert status.status_code == 200 and status.json()["state"] == "disconnected"


# --- settings beside the platform config -----------------------------------------------------------


async def test_channel_settings_have_defaults_and_user_mapping_secrets_are_encrypted(
    client: httpx.AsyncClient, resources: Resources, box: SecretBox
) -> None:
    plain = await create_channel(client, "plain", enabled=False)
    assert (plain["card_qps"], plain["language"], plain["user_mapping"]) == (20, "zh-CN", {"mode": "auto"})

    ldap = {
        "mode": "ldap",
        "url": "ldaps://ldap.example.com",
        "bind_dn": "cn=imgate,dc=example,dc=com",
        "bind_password": BIND_PASSWORD,
        "base_dn": "dc=example,dc=com",
    }
    created = await client.post(
        "/api/v1/channels",
        json={
            "name": "mapped",
            "platform": "dingtalk",
            "config": {"client_id": "x", "client_secret": CLIENT_SECRET},
            "user_mapping": ldap,
            "card_qps": 5,
            "language": "en-US",
            "enabled": False,
        },
    )
    assert created.status_code == 201, created.text
    channel = created.json()
    assert channel["user_mapping"]["bind_password"] == MASK
    assert channel["user_mapping"]["user_filter"] == "(employeeNumber={employee_id})"
    assert BIND_PASSWORD not in created.text
    row = await _row(resources, channel["id"])
    assert "bind_password" not in row.user_mapping
    assert box.decrypt_json(row.user_mapping_secrets_enc) == {"bind_password": BIND_PASSWORD}
    assert box.decrypt_json(row.secrets_enc) == {"client_secret": CLIENT_SECRET}
    # What the router reads back: the stored halves make the whole mapping again.
    mapping = parse_user_mapping(row.user_mapping, box.decrypt_json(row.user_mapping_secrets_enc))
    assert isinstance(mapping, LdapUserMapping)
    assert mapping.bind_password.get_secret_value() == BIND_PASSWORD

    # Same mode, password masked: kept. Another mode: the old secret does not carry over.
    kept = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={"user_mapping": {**channel["user_mapping"], "base_dn": "ou=people,dc=example,dc=com"}},
    )
    assert kept.status_code == 200, kept.text
    row = await _row(resources, channel["id"])
    assert row.user_mapping["base_dn"] == "ou=people,dc=example,dc=com"
    assert box.decrypt_json(row.user_mapping_secrets_enc) == {"bind_password": BIND_PASSWORD}
    switched = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={"user_mapping": {"mode": "http", "url": "https://erp.example/lookup"}},
    )
    assert switched.status_code == 200
    assert switched.json()["user_mapping"] == {
        "mode": "http",
        "url": "https://erp.example/lookup",
        "timeout_s": 5.0,
        "fallback_to_auto": True,
    }
    assert (await _row(resources, channel["id"])).user_mapping_secrets_enc is None
    audit = str([a.detail for a in await _audit(resources, "channel.update")])
    assert BIND_PASSWORD not in audit

    static = await client.patch(
        f"/api/v1/channels/{channel['id']}",
        json={"user_mapping": {"mode": "static", "username": "service-desk"}},
    )
    assert static.status_code == 200
    row = await _row(resources, channel["id"])
    assert parse_user_mapping(row.user_mapping, {}) == StaticUserMapping(
        mode="static", username="service-desk"
    )
    assert parse_user_mapping({}, {}) == AutoUserMapping()  # rows from before user mappings


async def test_a_mask_is_not_a_secret_on_create(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/api/v1/channels",
        json={"name": "m", "platform": "dingtalk", "config": {"client_id": "x", "client_secret": MASK}},
    )
    assert response.status_code == 422
    assert "client_secret" in response.json()["error"]["message"]


async def test_the_catalogue_lists_platforms_and_user_mapping_modes(client: httpx.AsyncClient) -> None:
    platforms = (await client.get("/api/v1/platforms")).json()
    assert [p["name"] for p in platforms] == ["dingtalk", "feishu"]
    dingtalk, feishu = platforms
    assert dingtalk["secret_fields"] == ["client_secret"]
    assert "client_id" in dingtalk["config_schema"]["properties"]
    assert feishu["secret_fields"] == ["app_secret"]
    assert {"app_id", "app_secret", "domain"} <= set(feishu["config_schema"]["properties"])
    modes = {m["mode"]: m for m in (await client.get("/api/v1/user-mappings")).json()}
    assert set(modes) == {"auto", "ldap", "http", "static"}
    assert modes["ldap"]["secret_fields"] == ["bind_password"]
