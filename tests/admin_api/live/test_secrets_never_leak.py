"""A full scenario against the running services, then a search for every secret it used: in every
API response (bodies and headers), the CLI's output, the services' logs and trace spans, and the
database files. None may appear anywhere."""

import json
import os
import sqlite3
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

from .conftest import ADMIN_TOKEN, LiveStack

pytestmark = pytest.mark.e2e


def _secret(kind: str) -> str:
    return f"{kind}-{uuid.uuid4().hex}"


APP_SECRET = _secret("app-secret")
WRONG_SECRET = _secret("wrong-secret")
AGENT_KEY = _secret("sk-agent-key")
AGENT_KEY_2 = _secret("sk-agent-key-two")
BIND_PASSWORD = _secret("ldap-bind-password")
ERP_KEY = _secret("lookup-api-key")
# Credentials inside URL fields: a base URL's user-info password and query key, a lookup's token.
URL_PASSWORD = _secret("url-password")
URL_KEY = _secret("url-query-key")
URL_TOKEN = _secret("url-token")
# The signature of a media download link, which reaches the connector inside the download URL.
MEDIA_SIGNATURE = _secret("media-signature")
SECRETS = [
    APP_SECRET,
    WRONG_SECRET,
    AGENT_KEY,
    AGENT_KEY_2,
    BIND_PASSWORD,
    ERP_KEY,
    URL_PASSWORD,
    URL_KEY,
    URL_TOKEN,
]
# Message text a failed insert carried: stored once it could be, shown with its conversation,
# never logged or traced.
FAILED_TEXT = _secret("failed-insert-text")


class Recorder:
    """Keeps the text of every response (status line, headers, body)."""

    def __init__(self) -> None:
        self.responses: list[str] = []

    def __call__(self, response: httpx.Response) -> None:
        response.read()
        headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
        line = f"{response.request.method} {response.request.url} {response.status_code}"
        self.responses.append(f"{line}\n{headers}\n{response.text}")


def _state(api: httpx.Client, channel_id: int) -> dict[str, Any]:
    status: dict[str, Any] = api.get(f"/channels/{channel_id}/status").json()
    return status


def _final_answer(live: LiveStack, client_id: str, conversation_id: str) -> dict[str, Any] | None:
    items = httpx.get(f"{live.imsim}/sim/apps/{client_id}/conversations/{conversation_id}", timeout=5).json()[
        "items"
    ]
    answers = [i for i in items if i["kind"] != "user"]
    if answers and all(a["kind"] != "card" or a["finalized"] for a in answers):
        return dict(answers[-1])
    return None


def _cli(live: LiveStack, *args: str) -> str:
    env = {**os.environ, "ADMIN_URL": live.admin, "ADMIN_TOKEN": ADMIN_TOKEN}
    result = subprocess.run(
        [sys.executable, "-m", "imgate_admin.cli", "--json", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout + result.stderr


def _refuse_inserts_of(live: LiveStack, marker: str) -> None:
    """Makes the database refuse to store a user message containing `marker`, as a full disk or
    a constraint would: the router's insert fails with the text in its statement parameters."""
    with sqlite3.connect(Path(live.stack.data_dir) / "live.db") as db:
        db.execute(
            "CREATE TRIGGER IF NOT EXISTS refuse_marked_messages BEFORE INSERT ON messages "
            f"WHEN NEW.content LIKE '%{marker}%' BEGIN SELECT RAISE(ABORT, 'refused by the test'); END"
        )


def _accept_inserts(live: LiveStack) -> None:
    with sqlite3.connect(Path(live.stack.data_dir) / "live.db") as db:
        db.execute("DROP TRIGGER IF EXISTS refuse_marked_messages")


def test_no_secret_appears_in_responses_logs_traces_or_the_database(live: LiveStack) -> None:
    recorder = Recorder()
    cli_output: list[str] = []
    client_id = f"leak-{uuid.uuid4().hex[:6]}"
    live.sim_app(client_id, APP_SECRET)
    with live.api(event_hooks={"response": [recorder]}) as api:
        # An agent with a key, tested against the model.
        agent = api.post(
            "/agents",
            json={
                "name": f"leak-agent-{client_id}",
                "provider": "openai",
                "model": "scripted",
                "base_url": live.model_url,
                "api_key": AGENT_KEY,
                # Pictures are fetched only for an agent that takes them (the leak case below).
                "supports_images": True,
            },
        ).json()
        assert api.post(f"/agents/{agent['id']}/test").json()["result"] == "passed"

        # A channel with a client secret; it connects within 2 s.
        created_at = time.monotonic()
        channel = api.post(
            "/channels",
            json={
                "name": f"leak-{client_id}",
                "platform": "dingtalk",
                "config": {"client_id": client_id, "client_secret": APP_SECRET},
                "default_agent_id": agent["id"],
            },
        ).json()
        channel_id = channel["id"]
        live.wait(lambda: _state(api, channel_id)["state"] == "connected", 5, "the channel connecting")
        assert time.monotonic() - created_at < 2.5

        # A message answered by the agent through the whole pipeline.
        sent = httpx.post(
            f"{live.imsim}/sim/apps/{client_id}/messages",
            json={"text": "Hello?", "sender_staff_id": "leaker"},
            timeout=5,
        ).json()
        live.wait(
            lambda: _final_answer(live, client_id, sent["conversation_id"]) is not None, 60, "the answer"
        )

        # A picture whose signed download link fails: the HTTP error names the link.
        picture = httpx.post(
            f"{live.imsim}/sim/apps/{client_id}/messages",
            json={
                "msgtype": "picture",
                "content": {"downloadCode": f"gone?Expires=1&OSSAccessKeyId=k&Signature={MEDIA_SIGNATURE}"},
                "sender_staff_id": "leaker-picture",
            },
            timeout=5,
        ).json()
        live.wait(
            lambda: _final_answer(live, client_id, picture["conversation_id"]) is not None, 60, "the picture"
        )
        assert "media_fetch_failed" in live.service_logs()["connector"]

        # A message the database refuses to store for a while: the failed insert's error is
        # logged (and the message tried again) without the text it tried to store.
        _refuse_inserts_of(live, FAILED_TEXT)
        try:
            refused = httpx.post(
                f"{live.imsim}/sim/apps/{client_id}/messages",
                json={"text": f"Please keep this: {FAILED_TEXT}", "sender_staff_id": "leaker-refused"},
                timeout=5,
            ).json()
            live.wait(
                lambda: "refused by the test" in live.service_logs()["router"], 10, "the insert failing"
            )
        finally:
            _accept_inserts(live)
        live.wait(
            lambda: _final_answer(live, client_id, refused["conversation_id"]) is not None,
            60,
            "the answer once the message could be stored",
        )

        # Wrong credentials: the connector reconnects and fails; the right ones again: green.
        wrong = {"client_id": client_id, "client_secret": WRONG_SECRET}
        assert api.patch(f"/channels/{channel_id}", json={"config": wrong}).status_code == 200
        live.wait(lambda: _state(api, channel_id)["state"] != "connected", 5, "the wrong secret failing")
        right = {"client_id": client_id, "client_secret": APP_SECRET}
        changed_at = time.monotonic()
        assert api.patch(f"/channels/{channel_id}", json={"config": right}).status_code == 200
        live.wait(lambda: _state(api, channel_id)["state"] == "connected", 5, "the right secret connecting")
        assert time.monotonic() - changed_at < 2.5, "a credentials change must take effect within 2 s"
        kept = {"client_id": client_id, "client_secret": "***", "robot_code": client_id}
        assert api.patch(f"/channels/{channel_id}", json={"config": kept}).status_code == 200
        # User mappings with secrets, set after the message: the router would now consult them, and
        # nothing answers on these loopback ports (the point is where their secrets end up).
        ldap = {
            "mode": "ldap",
            "url": "ldap://127.0.0.1:9",
            "bind_dn": "cn=imgate",
            "bind_password": BIND_PASSWORD,
            "base_dn": "dc=example",
        }
        assert api.patch(f"/channels/{channel_id}", json={"user_mapping": ldap}).status_code == 200
        lookup = {"mode": "http", "url": f"http://127.0.0.1:9/lookup?token={URL_TOKEN}", "api_key": ERP_KEY}
        assert api.patch(f"/channels/{channel_id}", json={"user_mapping": lookup}).status_code == 200
        # The lookup is consulted (and fails: nothing answers there) for a new sender.
        httpx.post(
            f"{live.imsim}/sim/apps/{client_id}/messages",
            json={"text": "Who am I?", "sender_staff_id": "newcomer"},
            timeout=5,
        ).raise_for_status()
        live.wait(lambda: "identity_lookup_failed" in live.service_logs()["router"], 10, "the lookup failing")
        # Moving it without the key again is refused, and nothing of the request comes back.
        moved = {"mode": "http", "url": "http://127.0.0.2:9/lookup", "api_key": "***"}
        assert api.patch(f"/channels/{channel_id}", json={"user_mapping": moved}).status_code == 422
        assert api.patch(f"/agents/{agent['id']}", json={"api_key": AGENT_KEY_2}).status_code == 200
        assert api.post(f"/agents/{agent['id']}/test").json()["result"] == "passed"
        # A base URL with credentials in it: stored whole, shown and audited masked, never logged.
        proxied = api.post(
            "/agents",
            json={
                "name": f"leak-proxied-{client_id}",
                "provider": "openai",
                "model": "scripted",
                "base_url": f"http://proxy:{URL_PASSWORD}@127.0.0.1:9/v1?key={URL_KEY}",
                "api_key": AGENT_KEY,
            },
        ).json()
        assert proxied["base_url"] == "http://proxy:***@127.0.0.1:9/v1?key=***"
        assert api.post(f"/agents/{proxied['id']}/test").json()["result"] == "failed"
        elsewhere = {"base_url": "http://127.0.0.2:9/v1", "api_key": "***"}
        assert api.patch(f"/agents/{proxied['id']}", json=elsewhere).status_code == 422

        # Refused input that carries secrets is not echoed back.
        bad = {
            "name": "bad",
            "platform": "dingtalk",
            "config": {"client_secret": APP_SECRET, "x": WRONG_SECRET},
        }
        assert api.post("/channels", json=bad).status_code == 422
        bad_agent = {"name": "bad", "provider": "openai", "api_key": AGENT_KEY, "temperature": 9}
        assert api.post("/agents", json=bad_agent).status_code == 422
        with live.api(token=APP_SECRET, event_hooks={"response": [recorder]}) as stranger:
            assert stranger.get("/channels").status_code == 401

        # A token for a script, used, then revoked (its own value is shown once, by design).
        token = api.post("/tokens", json={"name": "leak-script"}).json()
        with live.api(token=token["token"], event_hooks={"response": [recorder]}) as script:
            assert script.get("/channels").status_code == 200
        assert api.delete(f"/tokens/{token['id']}").status_code == 204

        # Everything an operator can read.
        conversations = api.get("/conversations", params={"channel_id": channel_id}).json()
        assert conversations, "the message opened a conversation"
        for path in [
            "/channels",
            f"/channels/{channel_id}",
            f"/channels/{channel_id}/status",
            "/agents",
            f"/agents/{agent['id']}",
            "/users",
            f"/conversations/{conversations[0]['id']}",
            "/tokens",
            "/audit",
            "/platforms",
            "/user-mappings",
        ]:
            assert api.get(path).status_code == 200, path
        with httpx.Client(base_url=live.admin, event_hooks={"response": [recorder]}, timeout=10) as root:
            for path in ("/healthz", "/readyz", "/openapi.json", "/console/", "/console/app.js"):
                assert root.get(path).status_code == 200, path
            assert root.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}).status_code == 200
        cli_output.append(_cli(live, "channels", "show", str(channel_id)))
        cli_output.append(_cli(live, "agents", "list"))

        # The lifecycle to the end.
        for action in ("disable", "enable", "restart"):
            assert api.post(f"/channels/{channel_id}/{action}").status_code == 200, action
        assert api.delete(f"/channels/{channel_id}").status_code == 204
        assert api.delete(f"/agents/{agent['id']}").status_code == 204
        assert api.delete(f"/agents/{proxied['id']}").status_code == 204

    time.sleep(1)  # let the services flush their last lines and spans
    logs = live.service_logs()
    assert any('"name": "POST /api/v1/channels"' in line for line in logs["admin-api"].splitlines()), (
        "the admin API's trace spans must be in its output for this search to cover traces"
    )
    assert "channel_created" in logs["admin-api"]
    database = b"".join(p.read_bytes() for p in Path(live.stack.data_dir).glob("live.db*"))

    places = {
        "API responses": "\n".join(recorder.responses),
        "CLI output": "\n".join(cli_output),
        **{f"{name} log": text for name, text in logs.items()},
    }
    leaks = [
        f"{secret[:18]}… in {where}" for secret in SECRETS for where, text in places.items() if secret in text
    ]
    leaks += [f"the media signature in {where}" for where, text in places.items() if MEDIA_SIGNATURE in text]
    leaks += [f"the message text in the {name} log" for name, text in logs.items() if FAILED_TEXT in text]
    # URL credentials are stored whole (the URL must work); every other secret only encrypted.
    stored_whole = (URL_PASSWORD, URL_KEY, URL_TOKEN)
    leaks += [
        f"{s[:18]}… in the database files"
        for s in SECRETS
        if s.encode() in database and s not in stored_whole
    ]
    leaks += [f"the admin token in {where}" for where, text in places.items() if ADMIN_TOKEN in text]
    leaks += [
        f"the script token in {w}" for w, t in places.items() if w != "API responses" and token["token"] in t
    ]
    assert not leaks, "\n".join(leaks)
    assert len(recorder.responses) > 40
    assert json.loads(cli_output[0])["config"]["client_secret"] == "***"
