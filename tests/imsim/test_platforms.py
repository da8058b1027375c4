"""In-process checks of the platform seam: the registry, the platform-neutral sim API over a
toy platform beside DingTalk, the per-platform chat list the chat page reads, and the start-up
app specs that name their platform."""

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from echo_platform import EchoPlatform

from imsim.app import create_app
from imsim.platform import SimPlatform
from imsim.platforms.dingtalk.platform import DingTalkPlatform
from imsim.platforms.feishu.platform import FeishuPlatform
from imsim.registry import PLATFORMS, by_name
from imsim.settings import AppSpec, Settings


@pytest.fixture
async def sim() -> AsyncIterator[httpx.AsyncClient]:
    settings = Settings(apps=[AppSpec(client_id="ding-app", client_secret="ding-secret")])
    app = create_app(settings, platforms=[DingTalkPlatform, EchoPlatform])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://imsim") as client:
        yield client


async def _ok(response: httpx.Response) -> Any:
    assert response.status_code == 200, response.text
    return response.json()


def test_registry_holds_every_platform_under_its_name():
    assert PLATFORMS == {"dingtalk": DingTalkPlatform, "feishu": FeishuPlatform}
    assert all(issubclass(p, SimPlatform) and p.name == name for name, p in PLATFORMS.items())


def test_registry_refuses_two_platforms_with_one_name():
    class Impostor(EchoPlatform):
        title = "Another echo"

    assert by_name(DingTalkPlatform, EchoPlatform) == {"dingtalk": DingTalkPlatform, "echo": EchoPlatform}
    with pytest.raises(ValueError, match="echo"):
        by_name(EchoPlatform, Impostor)


def test_a_platform_must_implement_the_whole_interface():
    class Half(SimPlatform):
        name = "half"
        title = "Half"

    with pytest.raises(TypeError, match="abstract"):
        Half(Settings())  # type: ignore[abstract]


async def test_platforms_list_their_apps_and_fault_kinds(sim):
    await _ok(await sim.post("/sim/platforms/echo/apps", json={"app_id": "echo-app", "secret": "s"}))
    platforms = {p["name"]: p for p in await _ok(await sim.get("/sim/platforms"))}
    assert list(platforms) == ["dingtalk", "echo"]
    assert platforms["dingtalk"]["title"] == "DingTalk"
    assert {"card_down", "half_dead", "disconnect_every"} <= set(platforms["dingtalk"]["fault_kinds"])
    assert "seed" not in platforms["dingtalk"]["fault_kinds"]
    assert [a["app_id"] for a in platforms["dingtalk"]["apps"]] == ["ding-app"]
    assert platforms["echo"]["apps"] == [
        {"app_id": "echo-app", "name": "echo-app", "connections": 1, "queued": 0, "faults_on": []}
    ]


async def test_chats_are_listed_per_platform(sim):
    await sim.post("/sim/platforms/echo/apps", json={"app_id": "echo-app", "secret": "s"})
    ding = await _ok(
        await sim.post(
            "/sim/platforms/dingtalk/apps/ding-app/messages",
            json={"text": "hi ding", "sender_id": "u1", "sender_name": "Una"},
        )
    )
    echo = await _ok(
        await sim.post("/sim/platforms/echo/apps/echo-app/messages", json={"text": "hi echo", "group": "Ops"})
    )
    groups = await _ok(await sim.get("/sim/chats"))
    assert [(g["platform"], g["title"]) for g in groups] == [("dingtalk", "DingTalk"), ("echo", "Echo")]
    [ding_chat], [echo_chat] = groups[0]["chats"], groups[1]["chats"]
    assert ding_chat == {
        **ding_chat,
        "app_id": "ding-app",
        "chat_id": ding["chat_id"],
        "type": "1",
        "title": "Una",
        "user_id": "u1",
        "last_text": "hi ding",
        "item_count": 1,
    }
    assert echo_chat == {
        **echo_chat,
        "app_id": "echo-app",
        "chat_id": echo["chat_id"],
        "type": "2",
        "title": "Ops",
        "last_text": "echo: hi echo",
        "item_count": 2,
    }


async def test_reading_a_chat_and_switching_faults_on_any_platform(sim):
    await sim.post("/sim/platforms/echo/apps", json={"app_id": "echo-app", "secret": "s"})
    sent = await _ok(await sim.post("/sim/platforms/echo/apps/echo-app/messages", json={"text": "one"}))
    chat = await _ok(await sim.get(f"/sim/platforms/echo/apps/echo-app/chats/{sent['chat_id']}"))
    assert [(i["kind"], i["text"]) for i in chat["items"]] == [("user", "one"), ("text", "echo: one")]
    assert chat["items"][1]["reply_to"] == sent["msg_id"]

    assert await _ok(await sim.patch("/sim/platforms/echo/apps/echo-app/faults", json={"mute": True})) == {
        "mute": True
    }
    await sim.post("/sim/platforms/echo/apps/echo-app/messages", json={"text": "two"})
    chat = await _ok(await sim.get(f"/sim/platforms/echo/apps/echo-app/chats/{sent['chat_id']}"))
    assert [i["text"] for i in chat["items"]][-1] == "two"
    assert (await sim.patch("/sim/platforms/echo/apps/echo-app/faults", json={"loud": 1})).status_code == 422

    assert (await _ok(await sim.post("/sim/reset?faults=true")))["reset"] == ["ding-app", "echo-app"]
    assert await _ok(await sim.get("/sim/platforms/echo/apps/echo-app/faults")) == {"mute": False}
    assert await _ok(await sim.get("/sim/platforms/echo/apps/echo-app/counters")) == {"chats": 0}


async def test_dingtalk_through_the_shared_api_matches_its_own(sim):
    sent = await _ok(
        await sim.post(
            "/sim/platforms/dingtalk/apps/ding-app/messages",
            json={
                "kind": "file",
                "file_name": "plan.pdf",
                "sender_id": "u2",
                "group": "Team",
                "at_bot": False,
            },
        )
    )
    assert sent["delivered"] is False  # nobody connected: queued
    own = await _ok(await sim.get(f"/sim/apps/ding-app/conversations/{sent['chat_id']}"))
    shared = await _ok(await sim.get(f"/sim/platforms/dingtalk/apps/ding-app/chats/{sent['chat_id']}"))
    assert shared == own
    assert own["type"] == "2" and own["title"] == "Team"
    assert own["items"][0]["msgtype"] == "file" and own["items"][0]["text"] == "[file] plan.pdf"

    changed = await _ok(
        await sim.patch("/sim/platforms/dingtalk/apps/ding-app/faults", json={"card_down": True})
    )
    assert changed == await _ok(await sim.get("/sim/apps/ding-app/faults/config"))
    assert changed["card_down"] is True
    [app] = (await _ok(await sim.get("/sim/platforms")))[0]["apps"]
    assert app["faults_on"] == ["cards down"] and app["queued"] == 1
    refused = await sim.patch("/sim/platforms/dingtalk/apps/ding-app/faults", json={"card_down": "x"})
    assert refused.status_code == 422
    assert await _ok(await sim.get("/sim/platforms/dingtalk/apps/ding-app/counters")) == await _ok(
        await sim.get("/sim/apps/ding-app/counters")
    )


async def test_unknown_platform_app_or_chat_is_404(sim):
    assert (await sim.get("/sim/platforms/nope/apps/a/counters")).status_code == 404
    missing = await sim.get("/sim/platforms/dingtalk/apps/nope/counters")
    assert missing.status_code == 404 and missing.json() == {"detail": "unknown app 'nope'"}
    sent = await sim.post("/sim/platforms/dingtalk/apps/nope/messages", json={"text": "x"})
    assert sent.status_code == 404
    assert (await sim.get("/sim/platforms/dingtalk/apps/ding-app/chats/none")).status_code == 404


def test_start_up_apps_name_their_platform():
    assert AppSpec.parse("cid:secret") == AppSpec(
        platform="dingtalk", client_id="cid", client_secret="secret"
    )
    assert AppSpec.parse("cid:secret:robot").robot_code == "robot"
    assert AppSpec.parse("dingtalk:cid:secret:robot") == AppSpec(
        platform="dingtalk", client_id="cid", client_secret="secret", robot_code="robot"
    )
    assert AppSpec.parse("feishu:cli_x:secret") == AppSpec(
        platform="feishu", client_id="cli_x", client_secret="secret"
    )
    for wrong in ("feishu:cli_x:secret:robot", "only-id", "a::b", "a:b:c:d"):
        with pytest.raises(ValueError, match="PLATFORM"):
            AppSpec.parse(wrong)
    env = Settings.apps_from_env({"IMSIM_APPS": "d1:s1, feishu:cli_y:s2"})
    assert [(a.platform, a.client_id) for a in env] == [("dingtalk", "d1"), ("feishu", "cli_y")]


async def test_each_platform_takes_its_own_start_up_apps():
    settings = Settings(apps=[AppSpec.parse("d1:s1"), AppSpec.parse("feishu:cli_z:s2")])
    assert [a.app_id for a in DingTalkPlatform(settings).apps()] == ["d1"]
    assert [a.app_id for a in FeishuPlatform(settings).apps()] == ["cli_z"]
