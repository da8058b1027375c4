"""Helpers that play the DingTalk Stream client and the test user against a running imsim."""

import asyncio
import json
import subprocess
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx
from websockets.asyncio.client import ClientConnection

BOT_TOPIC = "/v1.0/im/bot/messages/get"
BOT_SUBSCRIPTION = {"type": "CALLBACK", "topic": BOT_TOPIC}
# Apps the session's imsim is started with (`--app` and IMSIM_APPS).
PRESET_APP = ("preset-app", "preset-secret", "preset-robot")
ENV_APP = ("env-app", "env-secret")
PRESET_FEISHU_APP = ("cli_preset", "preset-feishu-secret")  # started as `--app feishu:ID:SECRET`


class StreamPeer:
    """One Stream connection, driven by hand."""

    def __init__(self, websocket: ClientConnection) -> None:
        self.websocket = websocket

    async def recv(self, within: float = 5.0) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await asyncio.wait_for(self.websocket.recv(), within))
        return frame

    async def recv_type(
        self, frame_type: str, within: float = 5.0, topic: str | None = None
    ) -> dict[str, Any]:
        """The next frame of a type (and topic), skipping others (e.g. pings)."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no {frame_type} frame within {within}s")
            frame = await self.recv(remaining)
            if frame["type"] == frame_type and (topic is None or frame["headers"]["topic"] == topic):
                return frame

    async def expect_silence(self, seconds: float, frame_type: str = "CALLBACK") -> None:
        """Fail if a frame of this type arrives within `seconds`."""
        try:
            frame = await self.recv_type(frame_type, within=seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected frame {frame}")

    async def ack(
        self, frame: dict[str, Any], *, code: int = 200, message: str = "OK", data: Any = None
    ) -> None:
        payload = data if data is not None else {"response": message}
        await self.websocket.send(
            json.dumps(
                {
                    "code": code,
                    "headers": {
                        "messageId": frame["headers"]["messageId"],
                        "contentType": "application/json",
                    },
                    "message": message,
                    "data": json.dumps(payload),
                }
            )
        )


async def open_connection(
    sim: httpx.AsyncClient, app: dict[str, Any], subscriptions: list[dict[str, str]] | None = None
) -> dict[str, Any]:
    response = await sim.post(
        "/v1.0/gateway/connections/open",
        json={
            "clientId": app["client_id"],
            "clientSecret": app["client_secret"],
            "subscriptions": [BOT_SUBSCRIPTION] if subscriptions is None else subscriptions,
            "ua": "imsim-tests/1.0",
            "localIp": "127.0.0.1",
        },
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


def ws_url(opened: dict[str, Any]) -> str:
    return f"{opened['endpoint']}?ticket={quote_plus(opened['ticket'])}"


async def sim_json(sim: httpx.AsyncClient, path: str) -> Any:
    response = await sim.get(path)
    response.raise_for_status()
    return response.json()


async def wait_for(
    fetch: Callable[[], Awaitable[Any]], ready: Callable[[Any], bool], within: float = 5.0
) -> Any:
    """Poll `fetch` until `ready(result)`; fail with the last result after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        result = await fetch()
        if ready(result):
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {within}s; last: {result!r}")
        await asyncio.sleep(0.05)


async def send_user_message(sim: httpx.AsyncClient, app: dict[str, Any], **body: Any) -> dict[str, Any]:
    body.setdefault("text", "hello bot")
    response = await sim.post(f"/sim/apps/{app['client_id']}/messages", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def access_token(sim: httpx.AsyncClient, app: dict[str, Any]) -> str:
    response = await sim.post(
        "/v1.0/oauth2/accessToken", json={"appKey": app["client_id"], "appSecret": app["client_secret"]}
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["accessToken"]
    return token


AI_CARD_TEMPLATE = "382e4302-551d-4880-bf29-a30acfab2e71.schema"


class CardApi:
    """The bot's side of the card OpenAPI, the way a DingTalk client calls it."""

    def __init__(self, sim: httpx.AsyncClient, app: dict[str, Any], token: str) -> None:
        self.sim = sim
        self.app = app
        self.token = token

    @classmethod
    async def for_app(cls, sim: httpx.AsyncClient, app: dict[str, Any]) -> "CardApi":
        return cls(sim, app, await access_token(sim, app))

    async def call(self, method: str, path: str, body: dict[str, Any]) -> httpx.Response:
        return await self.sim.request(
            method, path, json=body, headers={"x-acs-dingtalk-access-token": self.token}
        )

    async def create_and_deliver(
        self, out_track_id: str, *, staff_id: str | None = None, group_id: str | None = None, text: str = ""
    ) -> httpx.Response:
        body: dict[str, Any] = {
            "cardTemplateId": AI_CARD_TEMPLATE,
            "outTrackId": out_track_id,
            "cardData": {"cardParamMap": {"flowStatus": "1", "msgContent": text}},
            "callbackType": "STREAM",
        }
        if group_id is not None:
            body["openSpaceId"] = f"dtv1.card//IM_GROUP.{group_id}"
            body["imGroupOpenDeliverModel"] = {"robotCode": self.app["robot_code"]}
        else:
            body["openSpaceId"] = f"dtv1.card//IM_ROBOT.{staff_id}"
            body["imRobotOpenDeliverModel"] = {"spaceType": "IM_ROBOT"}
        return await self.call("POST", "/v1.0/card/instances/createAndDeliver", body)

    async def stream(
        self,
        out_track_id: str,
        content: str,
        *,
        full: bool = False,
        finalize: bool = False,
        error: bool = False,
    ) -> httpx.Response:
        return await self.call(
            "PUT",
            "/v1.0/card/streaming",
            {
                "outTrackId": out_track_id,
                "guid": uuid.uuid4().hex,
                "key": "msgContent",
                "content": content,
                "isFull": full,
                "isFinalize": finalize,
                "isError": error,
            },
        )

    async def set_status(self, out_track_id: str, flow_status: str, **params: str) -> httpx.Response:
        return await self.call(
            "PUT",
            "/v1.0/card/instances",
            {
                "outTrackId": out_track_id,
                "cardData": {"cardParamMap": {"flowStatus": flow_status, **params}},
                "cardUpdateOptions": {"updateCardDataByKey": True},
            },
        )


async def patch_faults(sim: httpx.AsyncClient, app: dict[str, Any], **changes: Any) -> dict[str, Any]:
    response = await sim.patch(f"/sim/apps/{app['client_id']}/faults/config", json=changes)
    assert response.status_code == 200, response.text
    config: dict[str, Any] = response.json()
    return config


def message_path(app: dict[str, Any], msg_id: str, suffix: str = "") -> str:
    """msgIds are base64 (`+`, `/`, `=`): quote them into the path."""
    return f"/sim/apps/{app['client_id']}/messages/{quote(msg_id, safe='')}{suffix}"


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """Terminate a process the tests started; kill it if it does not end within 10 s."""
    process.terminate()
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=5)
