"""`/v1.0/oauth2/accessToken` and the token every other OpenAPI call needs."""

import asyncio

import pytest
from imsim_testkit import access_token

pytestmark = pytest.mark.timeout(30)

CARD = {"cardTemplateId": "tpl.schema", "outTrackId": "t-1", "cardData": {"cardParamMap": {}}}


async def test_token_for_right_credentials_only(sim, make_app):
    app = await make_app(token_ttl=1234)
    good = await sim.post(
        "/v1.0/oauth2/accessToken", json={"appKey": app["client_id"], "appSecret": app["client_secret"]}
    )
    bad = await sim.post("/v1.0/oauth2/accessToken", json={"appKey": app["client_id"], "appSecret": "wrong"})
    missing = await sim.post("/v1.0/oauth2/accessToken", json={"appKey": app["client_id"]})
    assert good.status_code == 200
    assert good.json()["expireIn"] == 1234
    assert good.json()["accessToken"]
    assert bad.status_code in (400, 401)
    assert set(bad.json()) >= {"code", "message"}
    assert missing.status_code == 400
    assert set(missing.json()) >= {"code", "message"}


async def test_openapi_requires_a_valid_token(sim, make_app):
    app = await make_app()
    no_header = await sim.post("/v1.0/card/instances", json=CARD)
    made_up = await sim.post(
        "/v1.0/card/instances", json=CARD, headers={"x-acs-dingtalk-access-token": "made-up"}
    )
    for response in (no_header, made_up):
        assert response.status_code == 401
        assert response.json()["code"] == "InvalidAuthentication"
        assert response.json()["message"]

    token = await access_token(sim, app)
    ok = await sim.post("/v1.0/card/instances", json=CARD, headers={"x-acs-dingtalk-access-token": token})
    assert ok.status_code == 200, ok.text


async def test_expired_token_is_refused_until_refreshed(sim, make_app):
    app = await make_app()
    other = await make_app()
    token = await access_token(sim, app)
    other_token = await access_token(sim, other)
    headers = {"x-acs-dingtalk-access-token": token}

    expired = await sim.post(f"/sim/apps/{app['client_id']}/tokens/expire")
    assert expired.json() == {"expired": 1}
    refused = await sim.post("/v1.0/card/instances", json=CARD, headers=headers)
    assert refused.status_code == 401
    assert refused.json()["code"] == "InvalidAuthentication"

    # Another app's token is untouched; a fresh token works again.
    other_ok = await sim.post(
        "/v1.0/card/instances", json=CARD, headers={"x-acs-dingtalk-access-token": other_token}
    )
    assert other_ok.status_code == 200
    fresh = {"x-acs-dingtalk-access-token": await access_token(sim, app)}
    assert (await sim.post("/v1.0/card/instances", json=CARD, headers=fresh)).status_code == 200


async def test_token_expires_after_its_ttl(sim, make_app):
    app = await make_app()
    patched = await sim.patch(f"/sim/apps/{app['client_id']}", json={"token_ttl": 1})
    assert patched.json()["token_ttl"] == 1
    headers = {"x-acs-dingtalk-access-token": await access_token(sim, app)}
    assert (await sim.post("/v1.0/card/instances", json=CARD, headers=headers)).status_code == 200
    await asyncio.sleep(1.1)
    card = {**CARD, "outTrackId": "t-2"}
    assert (await sim.post("/v1.0/card/instances", json=card, headers=headers)).status_code == 401
