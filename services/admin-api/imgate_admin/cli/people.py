"""`imgate-admin users …` and `imgate-admin conversations …`"""

from typing import Annotated, Any

import typer

from imgate_admin.cli.output import fields, table
from imgate_admin.cli.state import JsonOpt, api, show
from imgate_common.platforms import Platform

users = typer.Typer(help="Users and their IM identities.", no_args_is_help=True)
conversations = typer.Typer(help="Conversations and their transcripts.", no_args_is_help=True)


def _identities(user: dict[str, Any]) -> str:
    return ", ".join(f"{i['platform']}:{i['platform_user_id']}#{i['id']}" for i in user["identities"])


@users.command("list")
def list_users(
    ctx: typer.Context,
    search: Annotated[
        str | None, typer.Option("--search", "-q", help="Part of a name, e-mail or IM id.")
    ] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    with api(ctx) as client:
        found = client.get("/users", q=search, limit=limit, offset=offset)
    rows = [
        (u["id"], u["username"], u["display_name"] or "", u["email"] or "", _identities(u)) for u in found
    ]
    show(ctx, as_json, found, table(rows, ("ID", "USERNAME", "NAME", "EMAIL", "IDENTITIES")))


@users.command("show")
def show_user(ctx: typer.Context, user_id: int, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        user = client.get(f"/users/{user_id}")
    show(ctx, as_json, user, fields({**user, "identities": _identities(user)}))


@users.command("create")
def create_user(
    ctx: typer.Context,
    username: str,
    email: str | None = None,
    display_name: str | None = None,
    as_json: JsonOpt = False,
) -> None:
    """Create a user by hand, to link IM identities to."""
    body = {
        k: v for k, v in {"username": username, "email": email, "display_name": display_name}.items() if v
    }
    with api(ctx) as client:
        user = client.post("/users", body)
    show(ctx, as_json, user, fields({**user, "identities": _identities(user)}))


@users.command("link")
def link_identity(
    ctx: typer.Context,
    user_id: int,
    platform_user_id: Annotated[str, typer.Option("--platform-user-id", help="The IM user id.")],
    platform: str = Platform.DINGTALK.value,
    tenant: Annotated[str, typer.Option(help="The IM organisation id (DingTalk corpId).")] = "",
    nick: str | None = None,
    as_json: JsonOpt = False,
) -> None:
    """Point an IM identity at this user (moving it if another user had it)."""
    body = {"platform": platform, "tenant_id": tenant, "platform_user_id": platform_user_id}
    if nick:
        body["nick"] = nick
    with api(ctx) as client:
        identity = client.post(f"/users/{user_id}/identities", body)
    show(ctx, as_json, identity, fields(identity))


@users.command("unlink")
def unlink_identity(ctx: typer.Context, user_id: int, identity_id: int, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        client.delete(f"/users/{user_id}/identities/{identity_id}")
    show(ctx, as_json, {"unlinked": identity_id}, f"identity {identity_id} unlinked from user {user_id}")


@conversations.command("list")
def list_conversations(
    ctx: typer.Context,
    channel: Annotated[int | None, typer.Option(help="Only this channel.")] = None,
    user: Annotated[int | None, typer.Option(help="Only this user.")] = None,
    is_open: Annotated[bool | None, typer.Option("--open/--closed", help="Only open or closed ones.")] = None,
    limit: int = 100,
    offset: int = 0,
    as_json: JsonOpt = False,
) -> None:
    params: dict[str, Any] = {"channel_id": channel, "user_id": user, "limit": limit, "offset": offset}
    if is_open is not None:
        params["open"] = str(is_open).lower()
    with api(ctx) as client:
        found = client.get("/conversations", **params)
    rows = [
        (
            c["id"],
            c["channel_id"],
            c["user_id"] or "",
            c["message_count"],
            c["last_activity_at"],
            c["closed_at"] or "",
        )
        for c in found
    ]
    show(ctx, as_json, found, table(rows, ("ID", "CHANNEL", "USER", "MESSAGES", "LAST ACTIVITY", "CLOSED")))


@conversations.command("show")
def show_conversation(ctx: typer.Context, conversation_id: str, as_json: JsonOpt = False) -> None:
    """The transcript."""
    with api(ctx) as client:
        found = client.get(f"/conversations/{conversation_id}")
    lines = [f"[{m['created_at']}] {m['role']}: {m['content']}" for m in found["messages"]]
    show(ctx, as_json, found, "\n".join(lines) or "(no messages)")


@conversations.command("close")
def close_conversation(ctx: typer.Context, conversation_id: str, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        found = client.post(f"/conversations/{conversation_id}/close")
    show(ctx, as_json, found, f"conversation {conversation_id} closed")
