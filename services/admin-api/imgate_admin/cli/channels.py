"""`imgate-admin channels …`"""

import json
from typing import Annotated, Any

import typer

from imgate_admin.cli.client import ApiError
from imgate_admin.cli.output import ago, duration, table
from imgate_admin.cli.output import fields as field_list
from imgate_admin.cli.state import JsonOpt, YesOpt, api, parse_pairs, show
from imgate_common.platforms import PLATFORM_CONFIGS, Platform


def config_fields() -> str:
    """Each platform's config fields as the platform registry declares them, secrets marked."""
    return "; ".join(
        f"{name}: "
        + ", ".join(
            f"{field} (secret)" if field in config.secret_fields else field for field in config.model_fields
        )
        for name, config in PLATFORM_CONFIGS.items()
    )


app = typer.Typer(
    help="List, create, change, enable, disable, restart and delete channels.", no_args_is_help=True
)

ConfigOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--config", "-c", help=f"A config field as KEY=VALUE (repeatable). Fields: {config_fields()}."
    ),
]
ConfigJsonOpt = Annotated[str | None, typer.Option("--config-json", help="The config as a JSON object.")]
SecretOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--secret", help="A secret config field (marked so under --config) to type in hidden (repeatable)."
    ),
]
MappingOpt = Annotated[
    str | None, typer.Option("--user-mapping-json", help='User mapping, e.g. {"mode": "auto"}.')
]


def status_line(status: dict[str, Any]) -> str:
    return f"{status['indicator']} {status['state']}"


def channel_rows(channels: list[dict[str, Any]]) -> str:
    rows = [
        (
            c["id"],
            c["name"],
            c["platform"],
            status_line(c["status"]),
            duration(c["status"]["uptime_s"]),
            c["status"]["messages_in"],
            c["status"]["replies_out"],
            c["status"]["reconnects"],
            c["status"]["rate_limit_hits"],
            (c["status"]["last_error"] or "")[:60],
        )
        for c in channels
    ]
    headers = (
        "ID",
        "NAME",
        "PLATFORM",
        "STATE",
        "UPTIME",
        "IN",
        "OUT",
        "RECONNECTS",
        "RATE-LIMITED",
        "LAST ERROR",
    )
    return table(rows, headers)


def status_text(status: dict[str, Any]) -> str:
    error = status["last_error"]
    if error and status["last_error_at"]:
        error = f"{error} ({ago(status['last_error_at'])})"
    return field_list(
        {
            "state": status_line(status),
            "owner": status["owner"] or "-",
            "uptime": duration(status["uptime_s"]),
            "connected at": status["connected_at"] or "-",
            "messages in": status["messages_in"],
            "replies out": status["replies_out"],
            "reconnects": status["reconnects"],
            "rate-limit hits": status["rate_limit_hits"],
            "last inbound": ago(status["last_inbound_at"]),
            "last error": error or "-",
        }
    )


def channel_text(channel: dict[str, Any]) -> str:
    summary = {k: v for k, v in channel.items() if k not in ("status", "control")}
    text = f"{field_list(summary)}\n\n{status_text(channel['status'])}"
    control = channel.get("control")
    if control:
        text += f"\n\nconnector: {control['outcome']}"
        if control.get("error"):
            text += f" ({control['error']})"
    return text


def _config(config_json: str | None, pairs: list[str] | None, secrets: list[str] | None) -> dict[str, Any]:
    config: dict[str, Any] = {}
    if config_json:
        try:
            config = json.loads(config_json)
        except json.JSONDecodeError as exc:
            raise typer.BadParameter(f"not JSON: {exc}", param_hint="--config-json") from None
        if not isinstance(config, dict):
            raise typer.BadParameter("must be a JSON object", param_hint="--config-json")
    config.update(parse_pairs(pairs or [], "--config"))
    for name in secrets or []:
        config[name] = typer.prompt(name, hide_input=True, err=True)
    return config


def _mapping(raw: str | None) -> dict[str, Any] | None:
    if raw is None:
        return None
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise typer.BadParameter(f"not JSON: {exc}", param_hint="--user-mapping-json") from None
    if not isinstance(value, dict):
        raise typer.BadParameter("must be a JSON object", param_hint="--user-mapping-json")
    return value


def _reentry(field: str) -> str:
    """How to give a secret the API asks for again: `config.client_secret` or
    `user_mapping.bind_password`."""
    part, _, name = field.partition(".")
    if part == "config":
        return f"--secret {name} (typed in hidden)"
    return f'"{name}": "…" inside --user-mapping-json'


@app.command("list")
def list_channels(
    ctx: typer.Context,
    platform: Annotated[str | None, typer.Option(help="Only this platform.")] = None,
    state: Annotated[
        str | None, typer.Option(help="connected, connecting, disconnected or disabled.")
    ] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    """Channels with their live status."""
    with api(ctx) as client:
        channels, headers = client.call(
            "GET",
            "/channels",
            params={"platform": platform, "state": state, "limit": limit, "offset": offset},
        )
    total = headers.get("x-total-count", str(len(channels)))
    show(ctx, as_json, channels, f"{channel_rows(channels)}\n({len(channels)} of {total})")


@app.command("show")
def show_channel(ctx: typer.Context, channel_id: int, as_json: JsonOpt = False) -> None:
    """One channel: its settings (secrets as ***) and live status."""
    with api(ctx) as client:
        channel = client.get(f"/channels/{channel_id}")
    show(ctx, as_json, channel, channel_text(channel))


@app.command("status")
def channel_status(ctx: typer.Context, channel_id: int, as_json: JsonOpt = False) -> None:
    """Live status: 🟢 connected, 🔴 disconnected, ⚪ disabled; uptime, counters, last error."""
    with api(ctx) as client:
        status = client.get(f"/channels/{channel_id}/status")
    show(ctx, as_json, status, status_text(status))


@app.command("create")
def create_channel(
    ctx: typer.Context,
    name: Annotated[str, typer.Option(help="Unique name.")],
    platform: Annotated[
        str, typer.Option(help=f"The IM platform: {', '.join(p.value for p in Platform)}.")
    ] = Platform.DINGTALK.value,
    config: ConfigOpt = None,
    config_json: ConfigJsonOpt = None,
    secret: SecretOpt = None,
    agent: Annotated[int | None, typer.Option(help="Default agent id.")] = None,
    scope: Annotated[str | None, typer.Option(help="Session scope: conversation or user.")] = None,
    language: Annotated[str | None, typer.Option(help="Language of the bot's own messages.")] = None,
    card_qps: Annotated[int | None, typer.Option(help="Card API calls per second for the app.")] = None,
    user_mapping_json: MappingOpt = None,
    enabled: Annotated[bool, typer.Option("--enabled/--disabled", help="Connect at once.")] = True,
    as_json: JsonOpt = False,
) -> None:
    """Create a channel: `--platform`, its config fields (`--config`, see there) and secrets
    (`--secret`), e.g. `--platform feishu --config app_id=cli_… --secret app_secret`."""
    body: dict[str, Any] = {
        "name": name,
        "platform": platform,
        "config": _config(config_json, config, secret),
        "enabled": enabled,
    }
    optional = {
        "default_agent_id": agent,
        "session_scope": scope,
        "language": language,
        "card_qps": card_qps,
        "user_mapping": _mapping(user_mapping_json),
    }
    body.update({k: v for k, v in optional.items() if v is not None})
    with api(ctx) as client:
        channel = client.post("/channels", body)
    show(ctx, as_json, channel, channel_text(channel))


@app.command("update")
def update_channel(
    ctx: typer.Context,
    channel_id: int,
    name: Annotated[str | None, typer.Option(help="New name.")] = None,
    config: ConfigOpt = None,
    config_json: ConfigJsonOpt = None,
    secret: SecretOpt = None,
    agent: Annotated[int | None, typer.Option(help="Default agent id.")] = None,
    no_agent: Annotated[bool, typer.Option("--no-agent", help="Remove the default agent.")] = False,
    scope: Annotated[str | None, typer.Option(help="Session scope: conversation or user.")] = None,
    language: Annotated[str | None, typer.Option(help="Language of the bot's own messages.")] = None,
    card_qps: Annotated[int | None, typer.Option(help="Card API calls per second for the app.")] = None,
    user_mapping_json: MappingOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Change a channel. Config fields given are merged into the stored config; secrets not given
    are kept."""
    body: dict[str, Any] = {}
    changes = _config(config_json, config, secret)
    with api(ctx) as client:
        if changes:
            current = client.get(f"/channels/{channel_id}")
            # The stored secrets come back as ***, which the API reads as "keep".
            body["config"] = {**current["config"], **changes}
        optional = {
            "name": name,
            "session_scope": scope,
            "language": language,
            "card_qps": card_qps,
            "user_mapping": _mapping(user_mapping_json),
            "default_agent_id": agent,
        }
        body.update({k: v for k, v in optional.items() if v is not None})
        if no_agent:
            body["default_agent_id"] = None
        try:
            channel = client.patch(f"/channels/{channel_id}", body)
        except ApiError as exc:
            raise exc.with_reentry_hint(_reentry) from None
    show(ctx, as_json, channel, channel_text(channel))


def _action(ctx: typer.Context, channel_id: int, action: str, as_json: bool) -> None:
    with api(ctx) as client:
        channel = client.post(f"/channels/{channel_id}/{action}")
    show(ctx, as_json, channel, channel_text(channel))


@app.command("enable")
def enable_channel(ctx: typer.Context, channel_id: int, as_json: JsonOpt = False) -> None:
    """Enable a channel and connect it."""
    _action(ctx, channel_id, "enable", as_json)


@app.command("disable")
def disable_channel(ctx: typer.Context, channel_id: int, as_json: JsonOpt = False) -> None:
    """Disconnect a channel and keep it off."""
    _action(ctx, channel_id, "disable", as_json)


@app.command("restart")
def restart_channel(ctx: typer.Context, channel_id: int, as_json: JsonOpt = False) -> None:
    """Reconnect an enabled channel."""
    _action(ctx, channel_id, "restart", as_json)


@app.command("delete")
def delete_channel(
    ctx: typer.Context, channel_id: int, yes: YesOpt = False, as_json: JsonOpt = False
) -> None:
    """Stop a channel and delete it with its conversations."""
    if not yes:
        typer.confirm(f"Delete channel {channel_id} and its conversations?", abort=True)
    with api(ctx) as client:
        client.delete(f"/channels/{channel_id}")
    show(ctx, as_json, {"deleted": channel_id}, f"channel {channel_id} deleted")
