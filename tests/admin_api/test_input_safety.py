"""Input a client can send never makes a 500: NUL bytes, lone surrogates, huge numbers, NaN."""

import json
from typing import Any

import httpx
import pytest

from .conftest import agent_body, channel_body

# Raw JSON (json.dumps would refuse some of these, and a client need not use it).
NUL = '"bad\\u0000name"'
SURROGATE = '"bad\\ud800name"'


async def _post_raw(client: httpx.AsyncClient, path: str, raw: str) -> httpx.Response:
    return await client.post(path, content=raw, headers={"Content-Type": "application/json"})


def _with(body: dict[str, Any], key: str, raw_value: str) -> str:
    marker = "__RAW__"
    return json.dumps({**body, key: marker}).replace(f'"{marker}"', raw_value)


@pytest.mark.parametrize("raw_value", [NUL, SURROGATE], ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    ("path", "body", "key"),
    [
        ("/api/v1/agents", agent_body(), "name"),
        ("/api/v1/agents", agent_body(), "system_prompt"),
        ("/api/v1/channels", channel_body(enabled=False), "name"),
        ("/api/v1/users", {"username": "u"}, "display_name"),
        ("/api/v1/tokens", {"name": "t"}, "name"),
    ],
)
async def test_unstorable_text_is_422(
    client: httpx.AsyncClient, path: str, body: dict[str, Any], key: str, raw_value: str
) -> None:
    response = await _post_raw(client, path, _with(body, key, raw_value))
    assert response.status_code == 422, response.text
    assert response.json()["error"]["code"] == "validation_error"


@pytest.mark.parametrize("raw_value", [NUL, SURROGATE], ids=["nul", "surrogate"])
async def test_unstorable_text_inside_a_config_or_as_a_key_is_422(
    client: httpx.AsyncClient, raw_value: str
) -> None:
    body = channel_body(enabled=False)
    raw = json.dumps(body).replace('"ding-app-key"', raw_value, 1)
    assert (await _post_raw(client, "/api/v1/channels", raw)).status_code == 422
    keyed = json.dumps(body).replace('"robot_code"', raw_value)
    response = await _post_raw(client, "/api/v1/channels", keyed)
    assert response.status_code == 422
    response.json()  # the error itself is valid JSON


@pytest.mark.parametrize(
    "change",
    [
        {"max_output_tokens": 10**30},
        {"max_turns": 2**40},
        {"timeout_s": 1e308 * 10},
        {"temperature": float("nan")},
    ],
    ids=["huge-int", "int64", "infinity", "nan"],
)
async def test_numbers_out_of_range_are_422(client: httpx.AsyncClient, change: dict[str, Any]) -> None:
    raw = json.dumps(agent_body(**change))  # json.dumps writes NaN / Infinity, which Python accepts
    response = await _post_raw(client, "/api/v1/agents", raw)
    assert response.status_code == 422, response.text


@pytest.mark.parametrize(
    "path",
    [
        "/api/v1/channels/99999999999999999999",
        "/api/v1/agents/-1",
        "/api/v1/users/0",
        "/api/v1/channels?limit=0",
        "/api/v1/channels?limit=100000",
        "/api/v1/channels?offset=-3",
        "/api/v1/channels?state=purple",
        f"/api/v1/conversations/{'x' * 300}",
        "/api/v1/conversations?channel_id=99999999999999999999",
    ],
)
async def test_bad_paths_and_queries_are_422(client: httpx.AsyncClient, path: str) -> None:
    response = await client.get(path)
    assert response.status_code == 422, response.text


async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient) -> None:
    response = await _post_raw(client, "/api/v1/agents", "{not json")
    assert response.status_code == 422
    response = await _post_raw(client, "/api/v1/agents", "[1, 2]")
    assert response.status_code == 422


async def test_a_search_with_like_wildcards_matches_them_literally(client: httpx.AsyncClient) -> None:
    assert (await client.post("/api/v1/users", json={"username": "plain"})).status_code == 201
    assert (await client.post("/api/v1/users", json={"username": "100%_sure"})).status_code == 201
    found = (await client.get("/api/v1/users", params={"q": "%_"})).json()
    assert [u["username"] for u in found] == ["100%_sure"]
    nul = await client.get("/api/v1/users", params={"q": "a\x00b"})
    assert nul.status_code == 422
