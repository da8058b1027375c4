"""Card API faults from the per-app fault configuration: QPS limits (403 and 429), latency with
jitter, a failure rate, card APIs down; seeded randomness; the configuration API itself."""

import asyncio
import json

import pytest
from imsim_testkit import CardApi, patch_faults, send_user_message, sim_json

pytestmark = pytest.mark.timeout(30)


@pytest.fixture
async def cards(sim, make_app):
    """An app, user `u1` talking to it, a delivered card `c1`, and the bot's card API."""
    app = await make_app()
    await send_user_message(sim, app, sender_staff_id="u1")
    api = await CardApi.for_app(sim, app)
    created = await api.create_and_deliver("c1", staff_id="u1")
    assert created.status_code == 200, created.text
    return app, api


async def test_fault_config_api(sim, make_app):
    app = await make_app()
    path = f"/sim/apps/{app['client_id']}/faults/config"
    defaults = await sim_json(sim, path)
    assert defaults == {
        "seed": None,
        "card_qps_limit": None,
        "card_qps_mode": 403,
        "card_latency_ms": 0.0,
        "card_jitter_ms": 0.0,
        "card_failure_rate": 0.0,
        "card_down": False,
        "messages_down": False,
        "disconnect_every": None,
        "half_dead": False,
        "open_failure": "none",
        "open_failure_status": 503,
        "open_failure_count": None,
    }
    patched = await patch_faults(sim, app, card_latency_ms=5, card_qps_limit=10)
    assert patched["card_latency_ms"] == 5 and patched["card_qps_limit"] == 10
    again = await patch_faults(sim, app, card_down=True)
    assert again["card_latency_ms"] == 5 and again["card_down"] is True  # PATCH merges

    replaced = await sim.put(path, json={"card_failure_rate": 0.25})
    assert replaced.status_code == 200
    assert replaced.json() == {**defaults, "card_failure_rate": 0.25}  # PUT replaces

    for bad in (
        {"card_failure_rate": 1.5},
        {"card_qps_mode": 500},
        {"no_such_fault": 1},
        {"open_failure": "x"},
    ):
        assert (await sim.patch(path, json=bad)).status_code == 422, bad
        assert (await sim.put(path, json=bad)).status_code == 422, bad
    assert (await sim_json(sim, path))["card_failure_rate"] == 0.25  # refused changes left no trace

    # The app resource shows the configuration and takes partial changes too; card_qps_limit
    # stays where it always was.
    via_app = await sim.patch(
        f"/sim/apps/{app['client_id']}", json={"card_qps_limit": 7, "fault_config": {"card_jitter_ms": 3}}
    )
    body = via_app.json()
    assert body["card_qps_limit"] == 7
    assert body["fault_config"] == {
        **defaults,
        "card_failure_rate": 0.25,
        "card_qps_limit": 7,
        "card_jitter_ms": 3,
    }
    created = await sim.post(
        "/sim/apps", json={"client_id": app["client_id"], "client_secret": "s", "fault_config": {"seed": 9}}
    )
    assert created.json()["fault_config"]["seed"] == 9
    assert (await sim.get("/sim/apps/nope/faults/config")).status_code == 404


async def test_qps_limit_answers_403_qps_limit(sim, cards, make_app):
    app, api = cards
    await patch_faults(sim, app, card_qps_limit=3)
    # The window counts the calls of the last second, those made before the limit too.
    early = [(await api.stream("c1", "x")).status_code for _ in range(3)]
    assert early == [200, 200, 403]  # the fixture's createAndDeliver was the first of three
    await asyncio.sleep(1.05)
    burst = [await api.stream("c1", "x") for _ in range(5)]
    assert [r.status_code for r in burst] == [200, 200, 200, 403, 403]
    refused = burst[-1].json()
    assert refused["code"] == "Forbidden.AccessDenied.QpsLimitForAppkeyAndApi"
    assert refused["message"] and refused["requestid"]

    # Only card APIs are limited, and only this app's.
    robot = await api.call(
        "POST",
        "/v1.0/robot/oToMessages/batchSend",
        {"robotCode": app["robot_code"], "userIds": ["u1"], "msgKey": "sampleText", "msgParam": "{}"},
    )
    assert robot.status_code == 200
    other = await make_app()
    await send_user_message(sim, other, sender_staff_id="u1")
    other_api = await CardApi.for_app(sim, other)
    assert (await other_api.create_and_deliver("o1", staff_id="u1")).status_code == 200

    # The window slides: a second later the app may call again. Refused calls changed nothing.
    await asyncio.sleep(1.05)
    assert (await api.stream("c1", "y")).status_code == 200
    card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/c1")
    assert card["content"] == "xxxxxy"


async def test_qps_limit_in_429_mode(sim, cards):
    app, api = cards
    await patch_faults(sim, app, card_qps_limit=2, card_qps_mode=429)
    await asyncio.sleep(1.05)
    burst = [await api.stream("c1", "x") for _ in range(3)]
    assert [r.status_code for r in burst] == [200, 200, 429]
    assert burst[-1].headers["retry-after"] == "1"
    assert burst[-1].json()["code"] == "Throttling"
    counters = await sim_json(sim, f"/sim/apps/{app['client_id']}/counters")
    assert counters["throttled"] == {"403": 0, "429": 1}
    assert counters["api_calls"]["by_outcome"]["qps_limited"] == 1


async def test_card_latency_with_jitter(sim, cards):
    app, api = cards
    await patch_faults(sim, app, card_latency_ms=250)
    started = asyncio.get_running_loop().time()
    assert (await api.stream("c1", "slow")).status_code == 200
    assert asyncio.get_running_loop().time() - started >= 0.24

    await patch_faults(sim, app, card_latency_ms=150, card_jitter_ms=100, seed=3)
    for _ in range(8):
        assert (await api.stream("c1", ".")).status_code == 200
    calls = await sim_json(sim, f"/sim/apps/{app['client_id']}/api-calls")
    jittered = [c["duration_ms"] for c in calls if c["path"] == "/v1.0/card/streaming"][-8:]
    # 150 ± 100 ms, measured by imsim itself; a little headroom above for a busy machine.
    assert all(45 <= d <= 330 for d in jittered), jittered
    assert max(jittered) - min(jittered) > 20, f"no jitter: {jittered}"

    # Other OpenAPI calls are not slowed down.
    token = await api.sim.post(
        "/v1.0/oauth2/accessToken", json={"appKey": app["client_id"], "appSecret": app["client_secret"]}
    )
    assert token.status_code == 200
    calls = await sim_json(sim, f"/sim/apps/{app['client_id']}/api-calls")
    assert calls[-1]["path"] == "/v1.0/oauth2/accessToken" and calls[-1]["duration_ms"] < 45


async def test_card_failure_rate_is_seeded_and_changes_nothing(sim, cards):
    app, api = cards

    async def statuses(count: int) -> list[int]:
        return [(await api.stream("c1", "a")).status_code for _ in range(count)]

    await patch_faults(sim, app, card_failure_rate=0.5, seed=7)
    first = await statuses(30)
    assert set(first) == {200, 500}
    await patch_faults(sim, app, seed=7)  # the same seed replays the same failures
    assert await statuses(30) == first
    await patch_faults(sim, app, seed=8)
    assert await statuses(30) != first

    failed = await api.stream("c1", "a")
    while failed.status_code != 500:
        failed = await api.stream("c1", "a")
    body = failed.json()
    assert body["code"] == "InternalError" and body["message"] and body["requestid"]

    # Failed calls changed nothing: the card holds exactly the appends that were answered 200.
    calls = await sim_json(sim, f"/sim/apps/{app['client_id']}/api-calls")
    ok = [c for c in calls if c["path"] == "/v1.0/card/streaming" and c["status"] == 200]
    assert all(c["outcome"] == "ok" for c in ok)
    assert {c["outcome"] for c in calls if c["status"] == 500} == {"failure_injected"}
    card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/c1")
    assert card["content"] == "a" * len(ok)

    await patch_faults(sim, app, card_failure_rate=1)
    assert set(await statuses(5)) == {500}
    await patch_faults(sim, app, card_failure_rate=0)
    assert set(await statuses(5)) == {200}


async def robot_text(api, app, text):
    """A robot message to user u1 through the robot send API."""
    return await api.call(
        "POST",
        "/v1.0/robot/oToMessages/batchSend",
        {
            "robotCode": app["robot_code"],
            "userIds": ["u1"],
            "msgKey": "sampleText",
            "msgParam": json.dumps({"content": text}),
        },
    )


async def test_card_apis_down(sim, cards):
    app, api = cards
    await patch_faults(sim, app, card_down=True)
    responses = [
        await api.create_and_deliver("c2", staff_id="u1"),
        await api.stream("c1", "x"),
        await api.set_status("c1", "3"),
        await api.call("POST", "/v1.0/card/instances", {"cardTemplateId": "t", "outTrackId": "c3"}),
    ]
    for response in responses:
        assert response.status_code == 503
        assert response.json()["code"] == "ServiceUnavailable"
    # Everything else still works: robot messages, access tokens.
    robot = await robot_text(api, app, "cards are down")
    assert robot.status_code == 200
    assert [c["out_track_id"] for c in await sim_json(sim, f"/sim/apps/{app['client_id']}/cards")] == ["c1"]

    await patch_faults(sim, app, card_down=False)
    assert (await api.create_and_deliver("c2", staff_id="u1")).status_code == 200
    counters = await sim_json(sim, f"/sim/apps/{app['client_id']}/counters")
    assert counters["api_calls"]["by_outcome"]["card_down"] == 4
    assert counters["api_calls"]["by_status"]["503"] == 4


async def test_messages_down_refuses_webhooks_and_robot_sends(sim, cards):
    app, api = cards
    await patch_faults(sim, app, messages_down=True)
    robot = await robot_text(api, app, "nobody hears this")
    assert robot.status_code == 503 and robot.json()["code"] == "ServiceUnavailable"
    assert (await api.create_and_deliver("c9", staff_id="u1")).status_code == 200, "cards still work"
    counters = await sim_json(sim, f"/sim/apps/{app['client_id']}/counters")
    assert counters["api_calls"]["by_outcome"]["messages_down"] == 1
