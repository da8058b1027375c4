"""Helpers that play the Feishu long-connection client and the test user against a running
imsim. Frames are lark-oapi's own `pbbp2.Frame`, built and read here by hand."""

import asyncio
import json
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
from websockets.asyncio.client import ClientConnection, connect

from imsim.platforms.feishu.frames import pbbp2

CONTROL, DATA = 0, 1


def headers_of(frame: Any) -> dict[str, str]:
    return {h.key: h.value for h in frame.headers}


class FeishuPeer:
    """One long connection, driven by hand."""

    def __init__(self, websocket: ClientConnection, service_id: int, device_id: str) -> None:
        self.websocket = websocket
        self.service_id = service_id
        self.device_id = device_id

    async def recv_frame(self, within: float = 5.0) -> Any:
        frame = pbbp2().Frame()
        frame.ParseFromString(await asyncio.wait_for(self.websocket.recv(), within))
        return frame

    async def recv_data(self, within: float = 5.0) -> Any:
        """The next data frame, skipping control frames."""
        deadline = asyncio.get_running_loop().time() + within
        while True:
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                raise TimeoutError(f"no data frame within {within}s")
            frame = await self.recv_frame(remaining)
            if frame.method == DATA:
                return frame

    async def recv_event(self, within: float = 5.0) -> tuple[list[Any], dict[str, Any]]:
        """The frames of the next event (several when its payload was split) and the event."""
        first = await self.recv_data(within)
        frames = [first]
        total = int(headers_of(first)["sum"])
        while len(frames) < total:
            frames.append(await self.recv_data(within))
        parts = sorted(frames, key=lambda f: int(headers_of(f)["seq"]))
        return frames, json.loads(b"".join(f.payload for f in parts))

    async def expect_no_data(self, seconds: float) -> None:
        try:
            frame = await self.recv_data(seconds)
        except TimeoutError:
            return
        raise AssertionError(f"unexpected data frame {headers_of(frame)}")

    async def ack(self, frame: Any, *, code: int = 200, biz_rt: str = "3") -> None:
        """Send the frame back with the response payload, as the SDK does once its handler ran."""
        answer = pbbp2().Frame()
        answer.CopyFrom(frame)
        header = answer.headers.add()
        header.key, header.value = "biz_rt", biz_rt
        answer.payload = json.dumps({"code": code}).encode()
        await self.websocket.send(answer.SerializeToString())

    async def ping(self) -> None:
        frame = pbbp2().Frame()
        frame.SeqID, frame.LogID, frame.service, frame.method = 0, 0, self.service_id, CONTROL
        header = frame.headers.add()
        header.key, header.value = "type", "ping"
        await self.websocket.send(frame.SerializeToString())


async def endpoint(sim: httpx.AsyncClient, app: dict[str, Any], secret: str | None = None) -> dict[str, Any]:
    response = await sim.post(
        "/callback/ws/endpoint",
        json={"AppID": app["app_id"], "AppSecret": app["app_secret"] if secret is None else secret},
    )
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


async def open_peer(sim: httpx.AsyncClient, app: dict[str, Any]) -> FeishuPeer:
    url = (await endpoint(sim, app))["data"]["URL"]
    query = parse_qs(urlsplit(url).query)
    websocket = await connect(url, open_timeout=5)
    return FeishuPeer(websocket, int(query["service_id"][0]), query["device_id"][0])


async def send_message(sim: httpx.AsyncClient, app: dict[str, Any], **body: Any) -> dict[str, Any]:
    body.setdefault("text", "hello bot")
    response = await sim.post(f"/sim/feishu/apps/{app['app_id']}/messages", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def tenant_token(sim: httpx.AsyncClient, app: dict[str, Any]) -> str:
    response = await sim.post(
        "/open-apis/auth/v3/tenant_access_token/internal",
        json={"app_id": app["app_id"], "app_secret": app["app_secret"]},
    )
    assert response.json()["code"] == 0, response.text
    token: str = response.json()["tenant_access_token"]
    return token


def streaming_card(text: str = "", element_id: str = "answer") -> str:
    return json.dumps(
        {
            "schema": "2.0",
            "config": {"streaming_mode": True, "summary": {"content": "[Generating...]"}},
            "header": {"title": {"tag": "plain_text", "content": "Assistant"}},
            "body": {"elements": [{"tag": "markdown", "content": text, "element_id": element_id}]},
        }
    )


class OpenApi:
    """The bot's side of Feishu's OpenAPI, the way a client calls it."""

    def __init__(self, sim: httpx.AsyncClient, token: str) -> None:
        self.sim = sim
        self.token = token

    @classmethod
    async def for_app(cls, sim: httpx.AsyncClient, app: dict[str, Any]) -> "OpenApi":
        return cls(sim, await tenant_token(sim, app))

    async def call(
        self, method: str, path: str, body: dict[str, Any] | None = None, **params: Any
    ) -> httpx.Response:
        return await self.sim.request(
            method, path, json=body, params=params, headers={"Authorization": f"Bearer {self.token}"}
        )

    async def create_card(self, data: str | None = None) -> str:
        response = await self.call(
            "POST", "/open-apis/cardkit/v1/cards", {"type": "card_json", "data": data or streaming_card()}
        )
        assert response.json()["code"] == 0, response.text
        card_id: str = response.json()["data"]["card_id"]
        return card_id

    async def stream(
        self, card_id: str, content: str, sequence: int, element_id: str = "answer"
    ) -> httpx.Response:
        return await self.call(
            "PUT",
            f"/open-apis/cardkit/v1/cards/{card_id}/elements/{element_id}/content",
            {"content": content, "sequence": sequence, "uuid": f"s-{card_id}-{sequence}"},
        )

    async def finish(self, card_id: str, summary: str, sequence: int) -> httpx.Response:
        settings = {"config": {"streaming_mode": False, "summary": {"content": summary}}}
        return await self.call(
            "PATCH",
            f"/open-apis/cardkit/v1/cards/{card_id}/settings",
            {"settings": json.dumps(settings), "sequence": sequence},
        )

    async def reply(
        self, message_id: str, msg_type: str, content: dict[str, Any], uuid: str | None = None
    ) -> httpx.Response:
        body: dict[str, Any] = {"msg_type": msg_type, "content": json.dumps(content)}
        if uuid is not None:
            body["uuid"] = uuid
        return await self.call("POST", f"/open-apis/im/v1/messages/{message_id}/reply", body)

    async def reply_card(self, message_id: str, card_id: str, uuid: str | None = None) -> httpx.Response:
        return await self.reply(
            message_id, "interactive", {"type": "card", "data": {"card_id": card_id}}, uuid
        )
