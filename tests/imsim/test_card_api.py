"""AI cards: create / deliver / createAndDeliver, streaming, instance updates, and how they
appear in the conversation timeline."""

import asyncio
import uuid

import pytest
from imsim_testkit import access_token, send_user_message, sim_json

pytestmark = pytest.mark.timeout(30)

TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"


@pytest.fixture
async def card_client(sim, make_app):
    """An app, a 1:1 conversation with user `staff7`, and an authorized OpenAPI caller."""
    app = await make_app()
    sent = await send_user_message(sim, app, sender_staff_id="staff7", text="explain")
    token = await access_token(sim, app)

    async def call(method, path, body):
        return await sim.request(method, path, json=body, headers={"x-acs-dingtalk-access-token": token})

    return app, sent, call


def robot_card(out_track_id, staff_id="staff7", **params):
    return {
        "cardTemplateId": TEMPLATE,
        "outTrackId": out_track_id,
        "cardData": {"cardParamMap": {"flowStatus": "1", "msgContent": "", **params}},
        "callbackType": "STREAM",
        "imRobotOpenSpaceModel": {"supportForward": True},
        "openSpaceId": f"dtv1.card//IM_ROBOT.{staff_id}",
        "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
    }


def stream(out_track_id, content, *, full=False, finalize=False, error=False, guid=None):
    return {
        "outTrackId": out_track_id,
        "guid": guid or uuid.uuid4().hex,
        "key": "msgContent",
        "content": content,
        "isFull": full,
        "isFinalize": finalize,
        "isError": error,
    }


async def test_card_lifecycle_in_timeline(sim, card_client):
    app, sent, call = card_client
    track = "track-lifecycle"
    created = await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card(track))
    assert created.status_code == 200, created.text
    assert created.json() == {
        "success": True,
        "result": {
            "outTrackId": track,
            "deliverResults": [
                {"spaceType": "IM_ROBOT", "spaceId": "staff7", "success": True, "carrierId": track}
            ],
        },
    }

    inputing = await call(
        "PUT",
        "/v1.0/card/instances",
        {
            "outTrackId": track,
            "cardData": {"cardParamMap": {"flowStatus": "2"}},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        },
    )
    assert inputing.status_code == 200
    for piece in ("The ", "answer ", "is"):
        response = await call("PUT", "/v1.0/card/streaming", stream(track, piece))
        assert response.status_code == 200 and response.json()["success"] is True
    await call("PUT", "/v1.0/card/streaming", stream(track, "The answer is **42**.", full=True))
    await call(
        "PUT", "/v1.0/card/streaming", stream(track, "The answer is **42**.", full=True, finalize=True)
    )
    finished = await call(
        "PUT",
        "/v1.0/card/instances",
        {
            "outTrackId": track,
            "cardData": {"cardParamMap": {"flowStatus": "3"}},
            "cardUpdateOptions": {"updateCardDataByKey": True},
        },
    )
    assert finished.status_code == 200

    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{sent['conversation_id']}"
    )
    assert conversation["type"] == "1"
    assert [i["kind"] for i in conversation["items"]] == ["user", "card"]
    card = conversation["items"][1]
    assert card["out_track_id"] == track
    assert card["template_id"] == TEMPLATE
    assert card["content"] == "The answer is **42**."
    assert card["params"]["msgContent"] == "The answer is **42**."
    assert card["flow_status"] == "3"
    assert card["finalized"] is True and card["error"] is False
    assert card["delivered"] is True
    assert card["created_at"] <= card["at"]
    ops = [u["op"] for u in card["updates"]]
    assert ops == ["create", "deliver", "update", "append", "append", "append", "full", "full", "update"]
    stream_lengths = [u["len"] for u in card["updates"] if u["op"] in ("append", "full")]
    assert stream_lengths == [4, 11, 13, 21, 21]
    assert [u["flow_status"] for u in card["updates"]][-1] == "3"
    assert [u["finalize"] for u in card["updates"]][-2] is True
    times = [u["at"] for u in card["updates"]]
    assert times == sorted(times)


async def test_create_then_deliver_into_group(sim, card_client):
    app, _sent, call = card_client
    group = await send_user_message(sim, app, conversation_type="2", conversation_title="Team")
    body = robot_card("track-group")
    for key in ("openSpaceId", "imRobotOpenDeliverModel"):
        body.pop(key)
    created = await call("POST", "/v1.0/card/instances", body)
    assert created.status_code == 200
    assert created.json()["result"]["deliverResults"] == []
    card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/track-group")
    assert card["delivered"] is False
    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{group['conversation_id']}"
    )
    assert [i["kind"] for i in conversation["items"]] == ["user"]

    deliver = {
        "outTrackId": "track-group",
        "openSpaceId": f"dtv1.card//IM_GROUP.{group['conversation_id']}",
        "imGroupOpenDeliverModel": {"robotCode": app["robot_code"]},
    }
    wrong_robot = await call(
        "POST", "/v1.0/card/instances/deliver", {**deliver, "imGroupOpenDeliverModel": {"robotCode": "other"}}
    )
    assert wrong_robot.status_code == 400
    no_model = await call(
        "POST",
        "/v1.0/card/instances/deliver",
        {k: v for k, v in deliver.items() if k != "imGroupOpenDeliverModel"},
    )
    assert no_model.status_code == 400
    delivered = await call("POST", "/v1.0/card/instances/deliver", deliver)
    assert delivered.status_code == 200, delivered.text
    assert delivered.json()["result"]["deliverResults"][0]["spaceType"] == "IM_GROUP"

    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{group['conversation_id']}"
    )
    assert [i["kind"] for i in conversation["items"]] == ["user", "card"]
    assert conversation["items"][1]["delivered"] is True
    assert conversation["items"][1]["flow_status"] == "1"
    assert conversation["items"][1]["content"] == ""


async def test_unknown_out_track_id_is_an_error(card_client):
    _app, _sent, call = card_client
    responses = [
        await call("PUT", "/v1.0/card/streaming", stream("never-created", "x")),
        await call(
            "PUT", "/v1.0/card/instances", {"outTrackId": "never-created", "cardData": {"cardParamMap": {}}}
        ),
        await call(
            "POST",
            "/v1.0/card/instances/deliver",
            {
                "outTrackId": "never-created",
                "openSpaceId": "dtv1.card//IM_ROBOT.staff7",
                "imRobotOpenDeliverModel": {"spaceType": "IM_ROBOT"},
            },
        ),
    ]
    for response in responses:
        assert response.status_code in (400, 404)
        assert response.json()["code"] and response.json()["message"]


async def test_duplicate_out_track_id_is_an_error(sim, card_client):
    app, sent, call = card_client
    first = await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card("dup"))
    again = await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card("dup"))
    create_only = await call(
        "POST", "/v1.0/card/instances", {"cardTemplateId": TEMPLATE, "outTrackId": "dup"}
    )
    assert first.status_code == 200
    for response in (again, create_only):
        assert response.status_code == 400
        assert response.json()["code"] and response.json()["message"]
    conversation = await sim_json(
        sim, f"/sim/apps/{app['client_id']}/conversations/{sent['conversation_id']}"
    )
    assert [i["kind"] for i in conversation["items"]] == ["user", "card"]


async def test_bad_requests_answer_like_dingtalk(card_client):
    _app, _sent, call = card_client
    bad_space = await call(
        "POST",
        "/v1.0/card/instances/createAndDeliver",
        {**robot_card("bad-space"), "openSpaceId": "IM_ROBOT.staff7"},
    )
    object_param = await call(
        "POST", "/v1.0/card/instances/createAndDeliver", robot_card("obj", msgTitle={"not": "a string"})
    )
    missing_field = await call("PUT", "/v1.0/card/streaming", {"outTrackId": "x"})
    for response in (bad_space, object_param, missing_field):
        assert response.status_code == 400, response.text
        assert set(response.json()) >= {"code", "message"}


async def test_update_without_by_key_replaces_the_param_map(sim, card_client):
    app, _sent, call = card_client
    await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card("replace", msgTitle="Title"))
    await call("PUT", "/v1.0/card/streaming", stream("replace", "partial"))
    # Non-string scalars are coerced to strings as DingTalk's Map<String,String> binding does.
    response = await call(
        "PUT",
        "/v1.0/card/instances",
        {"outTrackId": "replace", "cardData": {"cardParamMap": {"flowStatus": 5}}},
    )
    assert response.status_code == 200
    card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/replace")
    assert card["params"] == {"flowStatus": "5"}
    assert card["content"] == ""
    assert card["error"] is True


async def test_streaming_error_and_repeated_guid(sim, card_client):
    app, _sent, call = card_client
    await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card("errs"))
    guid = "same-guid"
    await call("PUT", "/v1.0/card/streaming", stream("errs", "once", guid=guid))
    repeated = await call("PUT", "/v1.0/card/streaming", stream("errs", "once", guid=guid))
    assert repeated.status_code == 200
    await call("PUT", "/v1.0/card/streaming", stream("errs", " - failed", error=True))
    card = await sim_json(sim, f"/sim/apps/{app['client_id']}/cards/errs")
    assert card["content"] == "once - failed"
    assert card["error"] is True and card["finalized"] is False
    assert card["streams"] == {"msgContent": "failed"}
    assert [u["op"] for u in card["updates"]] == ["create", "deliver", "append", "append"]


async def test_card_qps_limit_and_injected_faults(sim, card_client):
    app, _sent, call = card_client
    await call("POST", "/v1.0/card/instances/createAndDeliver", robot_card("limited"))
    fault = await sim.post(
        f"/sim/apps/{app['client_id']}/faults",
        json={"path": "/v1.0/card/streaming", "status": 429, "code": "Throttled", "times": 2},
    )
    assert fault.status_code == 200
    statuses = [
        (await call("PUT", "/v1.0/card/streaming", stream("limited", "x"))).status_code for _ in range(3)
    ]
    assert statuses == [429, 429, 200]
    faults = await sim_json(sim, f"/sim/apps/{app['client_id']}/faults")
    assert faults[0]["hits"] == 2

    await sim.patch(f"/sim/apps/{app['client_id']}", json={"card_qps_limit": 3})
    await asyncio.sleep(1.05)  # the limit counts the calls of the last second, made before it too
    burst = [await call("PUT", "/v1.0/card/streaming", stream("limited", "y")) for _ in range(5)]
    assert [r.status_code for r in burst] == [200, 200, 200, 403, 403]
    assert "QpsLimit" in burst[-1].json()["code"]
    await sim.patch(f"/sim/apps/{app['client_id']}", json={"card_qps_limit": None})
    assert (await call("PUT", "/v1.0/card/streaming", stream("limited", "z"))).status_code == 200

    calls = await sim_json(sim, f"/sim/apps/{app['client_id']}/api-calls")
    outcomes = [c["outcome"] for c in calls if c["path"] == "/v1.0/card/streaming"]
    assert outcomes == ["fault", "fault", "ok", "ok", "ok", "ok", "qps_limited", "qps_limited", "ok"]
