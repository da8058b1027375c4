"""The `imgate-admin` CLI against a served admin API: channels, agents, tokens, users, --json."""

import json
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import structlog
from click.testing import Result
from typer.testing import CliRunner

from imgate_admin.cli import app as cli
from imgate_admin.deps import Resources
from imgate_admin.settings import AdminSettings

from .conftest import ADMIN_TOKEN, CLIENT_SECRET, served

pytestmark = pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)


@pytest.fixture
def url(settings: AdminSettings, resources: Resources) -> Iterator[str]:
    # `resources`: the in-process app has numbered this database's channels far from 1, 2, 3.
    # The served app logs to the real stderr: CliRunner swaps sys.stdout for every thread while
    # a command runs, and the server's lines must not mix into the command's output.
    structlog.configure(logger_factory=structlog.PrintLoggerFactory(file=sys.__stderr__))
    try:
        with served(settings) as base:
            yield base
    finally:
        structlog.reset_defaults()


def run(url: str, *args: str, token: str = ADMIN_TOKEN, input: str | None = None) -> Result:
    return CliRunner().invoke(cli, ["--url", url, "--token", token, *args], input=input)


def ok(url: str, *args: str, input: str | None = None) -> str:
    result = run(url, *args, input=input)
    assert result.exit_code == 0, result.output
    return result.stdout


def as_json(url: str, *args: str, input: str | None = None) -> Any:
    return json.loads(ok(url, *args, "--json", input=input))


def test_channel_lifecycle(url: str) -> None:
    created = as_json(
        url,
        "channels",
        "create",
        "--name",
        "cli-bot",
        "--config",
        "client_id=ding-cli",
        "--config",
        "openapi_endpoint=http://127.0.0.1:9",
        "--secret",
        "client_secret",
        "--card-qps",
        "9",
        "--disabled",
        input=f"{CLIENT_SECRET}\n",
    )
    channel_id = str(created["id"])
    assert created["config"] == {
        "client_id": "ding-cli",
        "client_secret": "***",
        "openapi_endpoint": "http://127.0.0.1:9",
    }
    assert (created["card_qps"], created["enabled"]) == (9, False)

    listed = ok(url, "channels", "list", "--platform", "dingtalk")
    assert "cli-bot" in listed and "⚪ disabled" in listed and "(1 of 1)" in listed
    shown = ok(url, "channels", "show", channel_id)
    assert "***" in shown and CLIENT_SECRET not in shown

    updated = as_json(
        url, "channels", "update", channel_id, "--config", "robot_code=r1", "--language", "en-US"
    )
    assert updated["config"]["robot_code"] == "r1" and updated["config"]["client_secret"] == "***"
    assert updated["language"] == "en-US"

    refused = run(url, "channels", "restart", channel_id)
    assert refused.exit_code == 1
    assert "is disabled" in refused.stderr and "HTTP 400" in refused.stderr

    enabled = as_json(url, "channels", "enable", channel_id)
    assert enabled["enabled"] is True and enabled["control"]["action"] == "start"
    status = ok(url, "channels", "status", channel_id)
    assert "🔴 disconnected" in status or "🟡 connecting" in status
    assert as_json(url, "channels", "restart", channel_id)["control"]["action"] == "restart"
    assert as_json(url, "channels", "disable", channel_id)["status"]["state"] == "disabled"

    aborted = run(url, "channels", "delete", channel_id, input="n\n")
    assert aborted.exit_code == 1  # not confirmed: nothing deleted
    assert as_json(url, "channels", "show", channel_id)["name"] == "cli-bot"
    assert "deleted" in ok(url, "channels", "delete", channel_id, "--yes")
    gone = run(url, "channels", "show", channel_id)
    assert gone.exit_code == 1 and "not_found" in gone.stderr


def test_agents_and_tokens(url: str) -> None:
    agent = as_json(url, "agents", "create", "--name", "cli-agent", "--provider", "local")
    agent_id = str(agent["id"])
    assert "cli-agent" in ok(url, "agents", "list")
    tested = run(url, "agents", "test", agent_id)
    assert tested.exit_code == 0 and tested.stdout.startswith("skipped:")
    keyed = as_json(
        url,
        "agents",
        "update",
        agent_id,
        "--provider",
        "openai",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key",
        "-",
        input="sk-typed-in\n",
    )
    assert keyed["api_key"] == "***"
    failed = run(url, "agents", "test", agent_id)
    assert failed.exit_code == 1 and failed.stdout.startswith("failed:")
    assert as_json(url, "agents", "update", agent_id, "--clear-api-key")["api_key"] is None
    assert "deleted" in ok(url, "agents", "delete", agent_id, "--yes")

    token = as_json(url, "tokens", "create", "ci-job")
    assert token["token"].startswith("imgt_")
    assert "ci-job" in run(url, "tokens", "list", token=token["token"]).stdout
    ok(url, "tokens", "revoke", str(token["id"]))
    revoked = run(url, "tokens", "list", token=token["token"])
    assert revoked.exit_code == 1 and "HTTP 401" in revoked.stderr


def test_users_and_conversations(url: str) -> None:
    user = as_json(url, "users", "create", "alice", "--email", "alice@example.com")
    user_id = str(user["id"])
    identity = as_json(url, "users", "link", user_id, "--platform-user-id", "staff-7", "--nick", "Al")
    assert (identity["platform"], identity["platform_user_id"], identity["user_id"]) == (
        "dingtalk",
        "staff-7",
        user["id"],
    )
    assert "dingtalk:staff-7" in ok(url, "users", "list", "--search", "staff")
    assert "dingtalk:staff-7" in ok(url, "users", "show", user_id)
    ok(url, "users", "unlink", user_id, str(identity["id"]))
    assert as_json(url, "users", "show", user_id)["identities"] == []
    assert as_json(url, "conversations", "list", "--open") == []
    missing = run(url, "conversations", "show", "nope")
    assert missing.exit_code == 1 and "does not exist" in missing.stderr


def test_errors_are_one_line_on_stderr(url: str) -> None:
    no_token = CliRunner().invoke(
        cli, ["--url", url, "--token", "", "channels", "list"], env={"ADMIN_TOKEN": ""}
    )
    assert no_token.exit_code == 1 and "no token" in no_token.stderr
    wrong = run(url, "channels", "list", token="wrong")
    assert wrong.exit_code == 1 and "invalid bearer token" in wrong.stderr
    unreachable = run("http://127.0.0.1:9", "channels", "list")
    assert unreachable.exit_code == 1 and "cannot reach the admin API" in unreachable.stderr
    bad_pair = run(url, "channels", "create", "--name", "x", "--config", "no-equals-sign")
    assert bad_pair.exit_code == 2 and "KEY=VALUE" in bad_pair.output
    invalid = run(url, "channels", "create", "--name", "x", "--config", "client_id=a")
    assert invalid.exit_code == 1 and "config.client_secret: Field required" in invalid.stderr
    assert ADMIN_TOKEN not in no_token.output + wrong.output + unreachable.output + invalid.output


def test_moving_a_destination_asks_for_the_secret_again(url: str) -> None:
    agent = as_json(
        url,
        "agents",
        "create",
        "--name",
        "moved",
        "--provider",
        "openai",
        "--model",
        "m",
        "--base-url",
        "http://127.0.0.1:9/v1",
        "--api-key",
        "sk-first",
    )
    moved = run(url, "agents", "update", str(agent["id"]), "--base-url", "http://127.0.0.2:9/v1")
    assert moved.exit_code == 1
    assert "api_key: base_url changed: enter api_key again" in moved.stderr
    assert "enter it again:\n  --api-key - (typed in hidden), or --clear-api-key" in moved.stderr
    again = ["agents", "update", str(agent["id"]), "--base-url", "http://127.0.0.2:9/v1", "--api-key", "-"]
    assert as_json(url, *again, input="sk-second\n")["base_url"] == "http://127.0.0.2:9/v1"

    mapping = {
        "mode": "ldap",
        "url": "ldap://127.0.0.1:389",
        "bind_dn": "cn=imgate",
        "base_dn": "dc=example",
        "bind_password": "bind-first",
    }
    channel = as_json(
        url,
        "channels",
        "create",
        "--name",
        "moved-bot",
        "--config",
        "client_id=ding-moved",
        "--config",
        "openapi_endpoint=http://127.0.0.1:9",
        "--secret",
        "client_secret",
        "--user-mapping-json",
        json.dumps(mapping),
        "--disabled",
        input="first-secret\n",
    )
    channel_id = str(channel["id"])
    endpoint = run(url, "channels", "update", channel_id, "--config", "openapi_endpoint=http://127.0.0.2:9")
    assert endpoint.exit_code == 1
    assert "config.client_secret: openapi_endpoint changed" in endpoint.stderr
    assert "  --secret client_secret (typed in hidden)" in endpoint.stderr
    directory = {**channel["user_mapping"], "url": "ldap://127.0.0.2:389"}
    ldap = run(url, "channels", "update", channel_id, "--user-mapping-json", json.dumps(directory))
    assert ldap.exit_code == 1
    assert '  "bind_password": "…" inside --user-mapping-json' in ldap.stderr
    fixed = as_json(
        url,
        "channels",
        "update",
        channel_id,
        "--config",
        "openapi_endpoint=http://127.0.0.2:9",
        "--secret",
        "client_secret",
        "--user-mapping-json",
        json.dumps({**directory, "bind_password": "bind-second"}),
        input="second-secret\n",
    )
    assert fixed["config"]["openapi_endpoint"] == "http://127.0.0.2:9"
    assert fixed["user_mapping"]["url"] == "ldap://127.0.0.2:389"


def test_channel_create_help_names_every_platforms_fields(database_url: str) -> None:
    output = CliRunner().invoke(cli, ["channels", "create", "--help"]).output
    shown = " ".join(re.sub("[│╭╮╰╯─]", " ", output).split())  # the text without its boxes and wraps
    assert "dingtalk, feishu" in shown
    assert "dingtalk: client_id, client_secret (secret)" in shown
    assert "feishu: app_id, app_secret (secret), domain" in shown
