"""`imgate-admin tokens …` and `imgate-admin secrets …`"""

import asyncio
from typing import Annotated

import typer

from imgate_admin.cli.output import fields, table
from imgate_admin.cli.state import JsonOpt, api, show

tokens = typer.Typer(help="Create, list and revoke API tokens.", no_args_is_help=True)
secrets = typer.Typer(help="Stored secrets (key rotation).", no_args_is_help=True)


@tokens.command("list")
def list_tokens(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        found = client.get("/tokens")
    rows = [(t["id"], t["name"], t["prefix"] + "…", t["created_by"], t["revoked_at"] or "") for t in found]
    show(ctx, as_json, found, table(rows, ("ID", "NAME", "PREFIX", "CREATED BY", "REVOKED")))


@tokens.command("create")
def create_token(ctx: typer.Context, name: str, as_json: JsonOpt = False) -> None:
    """Create a token; it is printed this once and stored only as a hash."""
    with api(ctx) as client:
        token = client.post("/tokens", {"name": name})
    show(ctx, as_json, token, f"{token['token']}\n\n(token {token['id']} '{name}': shown only this once)")


@tokens.command("revoke")
def revoke_token(ctx: typer.Context, token_id: int, as_json: JsonOpt = False) -> None:
    with api(ctx) as client:
        client.delete(f"/tokens/{token_id}")
    show(ctx, as_json, {"revoked": token_id}, f"token {token_id} revoked")


@secrets.command("rotate")
def rotate(
    ctx: typer.Context,
    local: Annotated[
        bool,
        typer.Option(
            "--local",
            help="Work on the database directly (DATABASE_URL, IMGATE_SECRET_KEYS from the "
            "environment) instead of through the API.",
        ),
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Re-encrypt every stored secret under the first key of IMGATE_SECRET_KEYS."""
    if local:
        report = asyncio.run(_rotate_locally())
    else:
        with api(ctx) as client:
            report = client.post("/secrets/rotate")
    show(ctx, as_json, report, fields(report))
    if report["unreadable"]:
        typer.echo("some secrets cannot be decrypted with the configured keys", err=True)
        raise typer.Exit(1)


async def _rotate_locally() -> dict[str, object]:
    from imgate_admin.key_rotation.service import rotate_secrets
    from imgate_admin.settings import AdminSettings
    from imgate_common.db.engine import create_engine, session_factory
    from imgate_common.secrets import SecretBox

    settings = AdminSettings()
    engine = create_engine(settings.database_url)
    try:
        async with session_factory(engine)() as session:
            report = await rotate_secrets(session, SecretBox.from_settings(settings), "cli:local")
    finally:
        await engine.dispose()
    return report.model_dump()
